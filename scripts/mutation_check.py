#!/usr/bin/env python3
"""Mutation check: plant plausible bugs one at a time in a copy of the repository and see whether the tests
that should catch each one fail. Not part of CI (C++ mutants need rebuilds: tens of minutes on 2 cores); run it
before finishing a change to a kernel, the driver or the training tools:

    python scripts/mutation_check.py                 # every mutant
    python scripts/mutation_check.py --python-only   # skip the C++ mutants (no rebuilds)
    python scripts/mutation_check.py --only td-mask-shared,chunk-rec-dropped

The working tree (tracked and untracked, not ignored files) is copied to a temporary folder with the compiled
extension; Python mutants run against that extension, C++ mutants against a CPU-only rebuild of the copy
(DEEPRNN_FORCE_CPU=1; one full build, then one translation unit per mutant). Each mutant's test selection is first
run unmutated (it must pass), then mutated: a failing run kills the mutant. Prints a Markdown table and exits 1
if any mutant survived.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    """Replace the one occurrence of ``old`` in ``path`` by ``new``; ``tests`` are pytest arguments."""

    name: str
    path: str
    old: str
    new: str
    tests: Tuple[str, ...]
    what: str

    @property
    def cpp(self) -> bool:
        return self.path.startswith("csrc/")


TRAINING = ("tests/test_training.py",)
CLI = ("tests/test_cli_options.py", "tests/test_cli.py", "-k", "not torchrun and not demo and not video")
TD = ("tests/test_modules.py", "-k", "td")
CHUNKS = ("tests/test_native_chunks.py",)
CELL_CHUNKS = ("tests/test_cell_chunks.py",)
FINAL_STATE = ("tests/test_final_state.py",)
NATIVE = ("tests/test_functional.py", "-k", "not triton and not compile and not opcheck")
CUDA_EMULATION = ("tests/test_cuda_emulation.py",)

MUTANTS: List[Mutant] = [
    # --- training/overlap.py -------------------------------------------------------------------------------------
    Mutant("coherence-detach-wrong-clip", "deeprnn_cuda/training/overlap.py",
           "return lam * F.mse_loss(outputs, earlier.detach())", "return lam * F.mse_loss(outputs.detach(), earlier)",
           TRAINING, "coherence loss detaches the later clip (its gradient is zero)"),
    Mutant("coherence-step-detached", "deeprnn_cuda/training/overlap.py",
           "overlap_coherence_loss(space(logits[frames]), space(earlier), lam)",
           "overlap_coherence_loss(space(logits[frames]).detach(), space(earlier), lam)",
           TRAINING, "the training step detaches the later clip's side: the coherence term has no gradient"),
    Mutant("wave-normalisation-dropped", "deeprnn_cuda/training/overlap.py",
           "clip_loss / (len(wave) if step is not None else len(runner.clips))",
           "clip_loss / (1 if step is not None else len(runner.clips))",
           TRAINING, "per-wave loss is the sum over its clips, not the mean"),
    Mutant("overlap-first-frame-missed", "deeprnn_cuda/training/overlap.py",
           "seen = [f for f in range(clip.start, clip.stop) if f in outputs_at]",
           "seen = [f for f in range(clip.start + 1, clip.stop) if f in outputs_at]",
           TRAINING, "off-by-one at the clip boundary: the first shared frame is not compared"),
    Mutant("wave-ready-off-by-one", "deeprnn_cuda/training/overlap.py",
           "clips[i].start == 0 or clips[i].start - 1 in covered", "clips[i].start == 0 or clips[i].start in covered",
           TRAINING, "off-by-one: a clip is ready once its first frame (not the one before) is covered"),
    Mutant("clip-overlap-one-short", "deeprnn_cuda/training/overlap.py",
           "start = prev.stop - frames_shared\n", "start = prev.stop - frames_shared + 1\n",
           TRAINING, "off-by-one: clips share one frame fewer than sampled"),
    Mutant("handoff-wrong-state-slice", "deeprnn_cuda/training/overlap.py",
           "slice_state(index_state(s, f - item.clip.start), j * batch, (j + 1) * batch)",
           "slice_state(index_state(s, f - item.clip.start), 0, batch)",
           TRAINING, "wrong index: every clip of a wave hands on the first clip's state"),
    # --- cbm.py (module), reference.py, backends.py (autocast), _op_autograd.py ---------------------------------------------
    Mutant("td-mask-shared", "deeprnn_cuda/cbm.py",
           "return [torch.rand(shape, device=device) < self.td_rate for _ in range(n)]",
           "return [torch.rand(shape, device=device) < self.td_rate] * n",
           TD, "one Temporal Dropout mask shared by every layer"),
    Mutant("td-mask-dropped", "deeprnn_cuda/cbm.py", "td_mask=masks[i * D + d], act_r=self.act_r",
           "td_mask=None, act_r=self.act_r", TD, "the module never passes its TD mask on"),
    Mutant("td-in-eval", "deeprnn_cuda/cbm.py", "if not self.training or self.td_rate == 0.0:",
           "if self.td_rate == 0.0:", TD, "Temporal Dropout also in eval mode"),
    Mutant("autocast-casts-float64", "deeprnn_cuda/backends.py",
           "t.is_floating_point() and t.dtype != torch.float64", "t.is_floating_point()",
           ("tests/test_functional.py", "-k", "autocast"), "autocast also casts float64 inputs"),
    Mutant("reference-td-inverted", "deeprnn_cuda/reference.py",
           "torch.where(drop, x_t.detach(), x_t)", "torch.where(drop, x_t, x_t.detach())",
           ("tests/test_modules.py", "-k", "td_rate_one"), "swapped arguments: TD cuts the kept steps"),
    Mutant("autograd-bias-flags-swapped", "deeprnn_cuda/_op_autograd.py",
           "has_bias_r, has_bias_t = ctx.has_bias", "has_bias_t, has_bias_r = ctx.has_bias",
           NATIVE, "swapped: the gradient of the one given bias is dropped"),
    # --- training/loop.py (options reaching the code) -------------------------------------------------------------
    Mutant("loop-handoff-ignored", "deeprnn_cuda/training/loop.py", "cfg.coherence_lambda, cfg.handoff, step=update",
           "cfg.coherence_lambda, True, step=update", CLI, "--no-handoff has no effect"),
    Mutant("loop-grad-clip-sign", "deeprnn_cuda/training/loop.py", "if cfg.grad_clip > 0:",
           "if cfg.grad_clip < 0:", CLI, "wrong sign: --grad-clip never clips"),
    Mutant("loop-overlap-ignored", "deeprnn_cuda/training/loop.py",
           "cfg.clip_min, cfg.clip_max, cfg.overlap, generator", "cfg.clip_min, cfg.clip_max, 0.25, generator",
           CLI, "--overlap has no effect"),
    # --- C++: the recurrence driver and the CPU epilogue (rebuilt CPU-only) ---------------------------------------
    Mutant("chunk-rec-dropped", "csrc/cbm_recurrence.cpp", "[&, rec_in = rec]()", "[&, rec_in = Tensor()]()",
           CHUNKS, "a chunk does not receive the recurrent gradient of the chunk after it"),
    Mutant("chunk-td-first-mask", "csrc/recurrence.cpp", "mul_(keep.narrow(0, t0 * B, n * B))",
           "mul_(keep.narrow(0, 0, n * B))", CHUNKS, "wrong index: every chunk cuts x with the first chunk's TD mask"),
    Mutant("chunk-forward-first-input", "csrc/recurrence.cpp", "at::conv2d(x_c.narrow(0, t0, n)",
           "at::conv2d(x_c.narrow(0, 0, n)", CHUNKS, "wrong index: every chunk projects the first chunk's frames"),
    Mutant("epilogue-merge-swapped", "csrc/cpu/cbm_cpu.cpp", "(MERGE == kMergeMul ? g * cv : g) * act_r_grad",
           "(MERGE == kMergeMul ? g * rv : g) * act_r_grad", NATIVE, "swapped arguments: dmerge/dr uses r, not c"),
    Mutant("concat-fill-stale-x", "csrc/recurrence.cpp", "buffer_.narrow(1, 0, C_in_).copy_(x_[t]);",
           "buffer_.narrow(1, 0, C_in_).copy_(x_[0]);", CELL_CHUNKS, "wrong index: every step convolves x_0"),
    Mutant("gru-concat-rh-with-z", "csrc/cell_recurrence.cpp", "at::mul_out(rh, gates[t].narrow(1, C, C), h_prev);",
           "at::mul_out(rh, gates[t].narrow(1, 0, C), h_prev);", CELL_CHUNKS,
           "wrong gate: backward recomputes z * h_{t-1} for the n convolution"),
    Mutant("gru-concat-dx-one-path", "csrc/cell_recurrence.cpp", "at::add_out(dx, xh.grad_x(d_xh), xrh.grad_x(d_xrh));",
           "dx.copy_(xh.grad_x(d_xh));", CELL_CHUNKS, "x's gradient misses the n convolution's part"),
    Mutant("lstm-concat-dh-dropped", "csrc/cell_recurrence.cpp", "      dh_next = xh.grad_state(d_xh);\n",
           "      dh_next = at::zeros_like(dh_next);\n", CELL_CHUNKS, "the recurrent gradient is not carried back"),
    Mutant("final-state-wrong-slot", "csrc/recurrence.cpp", "buffer_.narrow(0, (T_ - 1) % 2, 1)",
           "buffer_.narrow(0, T_ % 2, 1)", FINAL_STATE, "off-by-one: the last state but one is returned"),
    Mutant("final-state-all-kept", "csrc/recurrence.cpp", "at::empty({all ? T : std::min<int64_t>(T, 2), B, C, H, W}",
           "at::empty({T, B, C, H, W}", FINAL_STATE, "every state is allocated again although only two are used"),
    # --- C++: the CUDA kernels' bodies and the CUDA tables, on the host executor -----------------------------------
    Mutant("cuda-body-merge-swapped", "csrc/cuda/epilogue_bodies.h", "dpr.v[k] = Tr::store((MERGE == kMergeMul ? g * cv",
           "dpr.v[k] = Tr::store((MERGE == kMergeMul ? g * rv", CUDA_EMULATION,
           "swapped arguments in the CUDA backward body: dmerge/dr uses r, not c"),
    Mutant("cuda-body-pack-offset", "csrc/cuda/epilogue_bodies.h", "store_pack<S, VEC>(a.o, b * a.s_o + j, o);",
           "store_pack<S, VEC>(a.o, b * a.s_c + j, o);", CUDA_EMULATION,
           "wrong stride: o is written with c's batch stride (only differs for strided outputs)"),
    Mutant("cuda-vector-unaligned", "csrc/cuda/epilogue_bodies.h", "a.s_c % V == 0 && a.s_o % V == 0 && aligned16(a.p_r)",
           "a.s_c % V == 0 && a.s_o % V == 0 && (true || aligned16(a.p_r))", CUDA_EMULATION,
           "the vector path taken for a misaligned projection"),
    Mutant("cuda-lstm-forget-gate", "csrc/cuda/epilogue_bodies.h", "const A c = f * load(14) + i * g;",
           "const A c = i * load(14) + i * g;", CUDA_EMULATION, "wrong gate: the CUDA LSTM body forgets with i"),
    Mutant("cuda-sequence-without-states", "csrc/cbm_recurrence.cpp", "steps >= T && (save_r || all_states);",
           "steps >= T;", FINAL_STATE, "the CUDA inference keeps every state although only the last is returned"),
]


def copy_tree(dst: Path) -> None:
    """The working tree's tracked and untracked (not ignored) files, plus the compiled extension."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for so in (ROOT / "deeprnn_cuda").glob("_C*.so"):
        shutil.copy2(so, dst / "deeprnn_cuda" / so.name)


def env_for(work: Path, cpp: bool) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(work), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    if cpp:
        env["DEEPRNN_FORCE_CPU"] = "1"
    return env


def build(work: Path, log: Path) -> bool:
    """CPU-only in-place build of the copy (incremental after the first)."""
    env = env_for(work, cpp=True)
    env.setdefault("MAX_JOBS", "2")
    with log.open("a") as f:
        done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    return done.returncode == 0


def run_tests(work: Path, tests: Sequence[str], cpp: bool, timeout: float) -> Tuple[bool, str]:
    """(passed, first failing test or reason) of ``pytest -x`` on ``tests`` in the copy."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        done = subprocess.run(cmd, cwd=work, env=env_for(work, cpp), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timeout after {timeout:.0f}s"
    if done.returncode == 0:
        return True, ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    return False, failed[0] if failed else (done.stdout + done.stderr).strip().splitlines()[-1][:120]


def apply(work: Path, m: Mutant) -> str:
    """Plant ``m``; returns the original text to restore."""
    path = work / m.path
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise SystemExit(f"mutant {m.name}: expected exactly one {m.old!r} in {m.path}, found {count}")
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-only", action="store_true", help="skip the C++ mutants (no rebuilds)")
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not (args.python_only and m.cpp)]
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTANTS}
        if unknown:
            parser.error(f"--only: unknown mutants {sorted(unknown)}")
        chosen = [m for m in chosen if m.name in names]
    chosen.sort(key=lambda m: (m.cpp, m.path))  # C++ last, one file at a time: one recompile per mutant
    work = Path(tempfile.mkdtemp(prefix="deeprnn-mutants-"))
    log = work / "build.log"
    rows = []
    try:
        copy_tree(work)
        print(f"copy of {ROOT} in {work}", file=sys.stderr)
        if any(m.cpp for m in chosen):
            print("building the copy CPU-only (once)...", file=sys.stderr)
            if not build(work, log):
                raise SystemExit(f"the unmutated copy does not build; see {log}")
        # Every selection passes unmutated first, before any mutant: after a C++ mutant the source is restored but
        # the extension stays mutated until the next build, so a baseline taken then would test that mutant.
        for tests, cpp in dict.fromkeys((m.tests, m.cpp) for m in chosen):
            ok, why = run_tests(work, tests, cpp, args.timeout)
            if not ok:
                raise SystemExit(f"unmutated tests fail ({' '.join(tests)}): {why}")
        for m in chosen:
            start = time.perf_counter()
            original = apply(work, m)
            try:
                if m.cpp and not build(work, log):
                    result = "killed (does not compile)"
                else:
                    ok, why = run_tests(work, m.tests, m.cpp, args.timeout)
                    result = "SURVIVED" if ok else f"killed: {why}"
            finally:
                (work / m.path).write_text(original)
            rows.append((m, result, time.perf_counter() - start))
            print(f"{m.name}: {result}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("| mutant | file | planted bug | result | s |")
    print("|---|---|---|---|---:|")
    for m, result, seconds in rows:
        print(f"| {m.name} | {m.path} | {m.what} | {result} | {seconds:.0f} |")
    survivors = [m.name for m, result, _ in rows if result == "SURVIVED"]
    print(f"\n{len(rows) - len(survivors)}/{len(rows)} killed" + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
