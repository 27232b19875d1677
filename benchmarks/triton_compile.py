"""Cold compile cost of the Triton kernels, measured without a GPU: ``python -m benchmarks.triton_compile``.

On a GPU, autotuning compiles every configuration that survives pruning (and the ``DEEPRNN_TRITON_MAX_CONFIGS``
cap) for each new specialization: kernel, pointer dtype, dot precision, kernel size, activations, merge. A short
GPU session pays these compiles before it measures anything, so their cost is measured here, on the CPU (Triton
compiles sm_90 code with its bundled ptxas; no GPU needed), each compile cold (a fresh cache directory).
Prints, per kernel and dtype, the configurations autotuning would compile for one representative shape and the
seconds (wall and CPU, ptxas included) of each cold compile.

``--sweep``: compile every configuration any launch can pick (:mod:`deeprnn_cuda.triton.config_sweep`: every
kernel, CBM and cells, every autotune entry, the multi-step kernels at their smallest and largest tile) for
``sm_80`` and ``sm_90``, one row each: shared memory per architecture, whether it fits the device's limit (A100
163 KB, H100/H200 227 KB), seconds; a compile error is a row too. Exits non-zero when any configuration failed
to compile or does not fit.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from typing import Dict, List, Tuple

from benchmarks.gpu import Table

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter has no compiler
    raise SystemExit("benchmarks.triton_compile needs TRITON_INTERPRET unset")

from deeprnn_cuda.triton import config_sweep, kernels  # noqa: E402

#: what a GPU session compiles: the precisions of float32 (IEEE and TF32), bf16 and fp16
CASES: List[Tuple[str, str]] = [("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee"), ("fp16", "ieee")]
#: a representative canonical shape (C = 128 at 28 x 28, B = 16): what pruning keeps for it
SHAPE = dict(C=128, B=16, H=28, W=28)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (ptxas runs as a child)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def configs_for(name: str) -> list:
    """The configurations autotuning compiles for SHAPE (pruned by shape, capped by DEEPRNN_TRITON_MAX_CONFIGS)."""
    if name.endswith("_step"):
        return kernels._prune_step(kernels._step_configs(), SHAPE)
    return kernels._prune_seq(kernels._seq_configs(), SHAPE)


def cold_compile(name: str, dt: str, prec: str, config) -> Tuple[float, float]:
    """(wall, CPU) seconds of one compile with an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        wall, cpu = time.perf_counter(), cpu_seconds()
        kernels.compile_for(name, dt, prec, config)
        return time.perf_counter() - wall, cpu_seconds() - cpu


def sweep(table: Table, cases: List[str], capabilities: List[int], kernel_names: List[str],
          labels: List[str]) -> bool:
    """Compile every configuration of ``kernel_names`` (all when empty), or only those ``labels`` name
    (:attr:`~deeprnn_cuda.triton.config_sweep.Variant.label`), for each ``dtype/prec`` case and each capability
    into ``table``; True when every one compiled and fits."""
    variants = [v for v in config_sweep.variants() if (not kernel_names or v.kernel in kernel_names)
                and (not labels or v.label in labels)]
    limits = ", ".join(f"sm_{cap} {config_sweep.SHARED_MEMORY_BYTES[cap]} B" for cap in capabilities)
    table.add(f"{len(variants)} configurations x {len(cases)} dtype/prec x {len(capabilities)} architectures; "
              f"shared memory limits {limits}", "",
              "| kernel | BLOCK MxNxK | warps | stages | dtype/prec | "
              + " | ".join(f"sm_{cap} shared B | fits | CPU s" for cap in capabilities) + " |",
              "|---|---|---:|---:|---|" + "---:|---|---:|" * len(capabilities))
    ok, total_cpu, total_wall = True, 0.0, 0.0
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # every variant is a distinct compile: all of them cold
        for v in variants:
            k = v.config.kwargs
            for case in cases:
                dt, prec = case.split("/")
                cells = []
                for cap in capabilities:
                    wall, cpu = time.perf_counter(), cpu_seconds()
                    try:
                        shared = config_sweep.compile_variant(v, dt, prec, cap).metadata.shared
                    except Exception as e:  # a row per failure: the sweep goes on to the others
                        cells.append(f"compile error: {type(e).__name__}: {str(e).splitlines()[0][:80]} | no | ")
                        ok = False
                        continue
                    finally:
                        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
                        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
                    fit = config_sweep.fits(shared, cap)
                    ok = ok and fit
                    cells.append(f"{shared} | {'yes' if fit else '**no**'} | {cpu:.1f}")
                table.add(f"| {v.kernel} | {k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} | {v.config.num_warps} | "
                          f"{v.config.num_stages} | {case} | " + " | ".join(cells) + " |")
    table.add("", f"Total: {total_cpu:.0f} CPU-s, {total_wall:.0f} s wall "
              f"({'every configuration compiled and fits' if ok else 'SOME CONFIGURATIONS FAILED OR DO NOT FIT'})")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true",
                        help="compile every configuration autotuning can pick (see above) instead of timing SHAPE's")
    parser.add_argument("--archs", default="80,90", help="--sweep: comma-separated compute capabilities")
    parser.add_argument("--labels", default="",
                        help="--sweep: only these configurations, comma-separated (e.g. 'fwd_step 128x128x64 w8 s3')")
    parser.add_argument("--kernels", default="fwd_step,bwd_step,fwd_seq,bwd_seq")
    parser.add_argument("--cases", default=",".join(f"{d}/{p}" for d, p in CASES),
                        help="comma-separated dtype/precision pairs")
    parser.add_argument("--configs-per-kernel", type=int, default=0,
                        help="time only the first N configurations of each kernel (0: every one autotuning compiles)")
    parser.add_argument("--out", help="also write the table to this file, row by row")
    args = parser.parse_args()
    table = Table(args.out)
    if args.sweep:
        names = [] if args.kernels == parser.get_default("kernels") else args.kernels.split(",")
        cases = [] if args.cases == parser.get_default("cases") else args.cases.split(",")
        ok = sweep(table, cases or ["fp32/tf32"], [int(c) for c in args.archs.split(",")], names,
                   [label for label in args.labels.split(",") if label])
        raise SystemExit(0 if ok else 1)
    table.add(f"Cold Triton compiles (sm_90, no GPU), shape {SHAPE}, "
              f"DEEPRNN_TRITON_MAX_CONFIGS={os.environ.get('DEEPRNN_TRITON_MAX_CONFIGS', '') or 'unset'}; "
              f"{time.strftime('%Y-%m-%d')}", "",
              "| kernel | dtype/prec | configs autotuned | timed | median wall s | median CPU s | sum CPU s (all) |",
              "|---|---|---:|---:|---:|---:|---:|")
    totals: Dict[str, float] = {}
    for name in args.kernels.split(","):
        configs = configs_for(name)
        timed = configs[:args.configs_per_kernel] if args.configs_per_kernel else configs
        for case in args.cases.split(","):
            dt, prec = case.split("/")
            runs = [cold_compile(name, dt, prec, c) for c in timed]
            wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            totals[case] = totals.get(case, 0.0) + cpu * len(configs)
            table.add(f"| {name} | {case} | {len(configs)} | {len(timed)} | {wall:.2f} | {cpu:.2f} | "
                      f"{cpu * len(configs):.1f} |")
    table.add("", "CPU seconds to autotune one new shape key, all four kernels (median compile x configs): "
              + ", ".join(f"{case} {s:.0f} s" for case, s in totals.items()))


if __name__ == "__main__":
    main()
