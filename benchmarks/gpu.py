"""GPU benchmark of the CBM backends (issue 3's table): ``python -m benchmarks.gpu [--quick] [--out FILE]``.

For every canonical shape (T=16, B=16; L: 64 ch at 56x56, M: 128 at 28x28, S: 256 at 14x14, XS: 512 at 7x7),
dtype (float32, bf16) and pass (fwd, fwd+bwd) it times, side by side in one process: the native CUDA backend,
the Triton backend, the authors' per-step eager formulation and ``torch.compile`` of the reference. Also a
training step of a 15-layer CBM stack (C=64, 28x28, shortcuts every 2). Reports medians (CUDA events), % of
roofline (FLOPs and minimum bytes against the measured matmul rate and copy bandwidth) and peak memory, and
the geometric means of the fwd+bwd speed-ups. Then every cell (CBM, ConvLSTM, ConvGRU): its native module
against its per-step ``nn.Conv2d`` loop at shape M, train step and inference (the "vs eager" column is the
speed-up over that loop). ``--quick`` runs tiny shapes (also on CPU) to check the script.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from benchmarks.cases import BENCH_CELLS, LOOP, Shape, cell_contenders
from deeprnn_cuda import CBM, _native, cbm_layer_ref
from deeprnn_cuda import triton as triton_backend
from deeprnn_cuda.authors import AuthorsRBM

CANONICAL = {"L": Shape(16, 16, 64, 64, 56, 56), "M": Shape(16, 16, 128, 128, 28, 28),
             "S": Shape(16, 16, 256, 256, 14, 14), "XS": Shape(16, 16, 512, 512, 7, 7)}
QUICK = {"tiny": Shape(4, 2, 8, 8, 8, 8), "tiny2": Shape(3, 2, 16, 16, 6, 6)}  # two: the per-shape paths
#: the shapes of the per-cell table
CELL_SHAPES, CELL_SHAPES_QUICK = ("M",), ("tiny",)
#: the contenders the geometric means take the best of (what backend="auto" can pick between)
COMPILED = ("native", "native persistent", "triton")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call; CUDA events on the GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_times(fns: Dict[str, Callable[[], None]], device: torch.device, repeats: int) -> Dict[str, float]:
    """Median seconds of each contender; one that raises is reported on stderr and left out of the table."""
    times = {}
    for k, f in fns.items():
        try:
            times[k] = median_time(f, device, repeats)
        except Exception as e:  # one broken contender (e.g. a torch.compile failure) must not lose the table
            print(f"{k}: failed ({type(e).__name__}: {str(e)[:300]})", file=sys.stderr)
    return times


def ratio(times: Dict[str, float], base: str, t: float) -> str:
    return f"{times[base] / t:.2f}x" if base in times else "n/a"


class Table:
    """A markdown table written as it is measured: each line is printed and appended to ``out`` (when given) at
    once, flushed, so a run cut short (a GPU session's time limit) keeps every row it finished."""

    def __init__(self, out: Optional[str]) -> None:
        self.out = out
        if out:
            open(out, "w").close()

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            if self.out:
                with open(self.out, "a") as f:
                    f.write(line + "\n")


def split_names(value: str) -> List[str]:
    """A comma-separated command-line list, without empty items."""
    return [v.strip() for v in value.split(",") if v.strip()]


def peak_memory(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def machine_rates(device: torch.device, dtype: torch.dtype) -> Dict[str, float]:
    """Measured dense matmul FLOP/s and device copy bytes/s (the roofline's two ceilings)."""
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: a @ b, device, 10)
    src = torch.empty(2**28 if device.type == "cuda" else 2**22, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    tc = median_time(lambda: dst.copy_(src), device, 10)
    return {"flops": 2 * n**3 / t, "bytes": 2 * src.numel() / tc}


def cbm_costs(s: Shape, dtype: torch.dtype, train: bool) -> Dict[str, float]:
    """FLOPs of the layer (backward = 2x forward) and the bytes it must at least move."""
    pixels = s.T * s.B * s.H * s.W
    fwd = 2 * pixels * s.C * (s.C_in + s.C_in + s.C) * s.k * s.k
    elt = torch.finfo(dtype).bits // 8
    fwd_bytes = pixels * (s.C_in + 3 * s.C) * elt  # read x; write o, c and the saved r
    bwd_bytes = pixels * (4 * s.C + s.C + s.C_in) * elt  # read dO, r, c (+dC); write dx
    return {"flops": fwd * (3 if train else 1), "bytes": fwd_bytes + (bwd_bytes if train else 0)}


@contextlib.contextmanager
def environment(values: Dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (the op reads them on every call)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def persistent(fn: Callable[[], None]) -> Callable[[], None]:
    """fn with the native CUDA op's persistent kernels forced on (DEEPRNN_CUDA_PERSISTENT=1, read per call)."""
    def wrapped() -> None:
        with environment({"DEEPRNN_CUDA_PERSISTENT": "1"}):
            fn()
    return wrapped


def layer_contenders(s: Shape, dtype: torch.dtype, device: torch.device, train: bool,
                     wanted: Callable[[str], bool] = lambda name: True) -> Dict[str, Callable]:
    """The contenders for one layer call that ``wanted`` keeps; ``torch.compile(reference)`` comes last (its
    compile is the slowest part of a row, so a row cut short still has the rest)."""
    torch.manual_seed(0)
    authors = AuthorsRBM(s.C_in, s.C, s.k).to(device=device, dtype=dtype)
    x_bt = torch.randn(s.B, s.T, s.C_in, s.H, s.W, device=device, dtype=dtype).requires_grad_(train)
    x_tb = x_bt.detach().transpose(0, 1).contiguous().requires_grad_(train)

    def run(model_call: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            with torch.set_grad_enabled(train):
                out = model_call()
                if train:
                    out.float().sum().backward()
        return fn

    fns = {"authors eager": run(lambda: authors(x_bt)[0])}
    backends = []
    if _native.is_available() and _native.supports(x_tb):
        backends.append("native")
    if triton_backend.is_available() and triton_backend.supports(x_tb):
        backends.append("triton")
    model_ref = CBM.from_authors_state_dict(authors.state_dict(), backend="reference")
    for backend in backends:
        model = CBM.from_authors_state_dict(authors.state_dict(), backend=backend)
        fns[backend] = run(lambda model=model: model(x_tb)[0])
        if backend == "native" and device.type == "cuda":
            fns["native persistent"] = persistent(fns[backend])
    fns = {k: f for k, f in fns.items() if wanted(k)}
    if not wanted("torch.compile(reference)"):
        return fns
    layer = model_ref.layers[0]
    c0 = torch.zeros(s.B, s.C, s.H, s.W, device=device, dtype=dtype)
    # A fresh, static compile per shape: recompiling one function for each new shape turns on dynamic shapes
    # (which inductor failed to compile for these convolutions) and soon hits dynamo's recompile limit, after
    # which it silently runs eager.
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: cbm_layer_ref(x, layer.weight_r, layer.bias_r, layer.weight_t, layer.bias_t,
                                                      c0, act_r="tanh")[0], dynamic=False)
    fns["torch.compile(reference)"] = run(lambda: compiled(x_tb))
    return fns


def stack_contenders(device: torch.device, dtype: torch.dtype, quick: bool,
                     wanted: Callable[[str], bool] = lambda name: True) -> Dict[str, Callable]:
    """One training step (fwd+bwd+SGD) of a 15-layer CBM stack, C=64 at 28x28, shortcuts every 2."""
    T, B, C, HW, layers = (4, 2, 8, 8, 3) if quick else (16, 16, 64, 28, 15)
    torch.manual_seed(0)
    x = torch.randn(T, B, C, HW, HW, device=device, dtype=dtype)
    fns = {}
    backends = ["reference"] + [b for b, ok in (("native", _native.is_available() and _native.supports(x)),
                                                ("triton", triton_backend.is_available() and triton_backend.supports(x)))
                                if ok]
    for backend in backends:
        model = CBM(C, C, 3, num_layers=layers, shortcut_every=2, backend=backend).to(device=device, dtype=dtype)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        name = "eager per-step (reference)" if backend == "reference" else backend
        if not wanted(name) and not (backend == "native" and wanted("native persistent")):
            continue

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            model(x)[0].float().square().mean().backward()
            opt.step()
        if wanted(name):
            fns[name] = step
        if backend == "native" and device.type == "cuda" and wanted("native persistent"):
            fns["native persistent"] = persistent(step)
    return fns


def cell_rows(label: str, s: Shape, dtype: torch.dtype, device: torch.device, repeats: int) -> List[str]:
    """Table rows of every cell's native module against its per-step loop (NEVER RUN ON A GPU so far)."""
    rows = []
    for cell in BENCH_CELLS:
        for train in (True, False):
            fns = cell_contenders(cell, s, dtype, str(device))
            times = median_times({k: (lambda f=f: f(train)) for k, f in fns.items()}, device, repeats)
            for k, t in times.items():
                rows.append(f"| {cell} {label} {s} | {str(dtype)[6:]} | {'train' if train else 'inference'} | {k} | "
                            f"{t * 1e3:.3f} | | | {ratio(times, LOOP, t)} | |")
    return rows


DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
CONTENDERS = ("authors eager", "native", "native persistent", "triton", "torch.compile(reference)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to check the script (CPU works)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="also write the markdown table to this file, row by row")
    parser.add_argument("--shapes", default="", help="comma-separated shape labels (default: all of the mode's)")
    parser.add_argument("--dtypes", default="float32,bf16", help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated contenders to time (the eager baseline is always timed)")
    parser.add_argument("--compile-dtypes", default="float32",
                        help="dtypes in which torch.compile(reference) competes (each shape costs a compile)")
    parser.add_argument("--no-stack", action="store_true", help="skip the 15-layer training step")
    parser.add_argument("--no-cells", action="store_true", help="skip the ConvLSTM / ConvGRU / CBM module rows")
    args = parser.parse_args()
    shapes = QUICK if args.quick else CANONICAL
    labels = split_names(args.shapes) or list(shapes)
    contenders = set(split_names(args.contenders)) | {"authors eager", "eager per-step (reference)"}
    for name, values, known in (("--shapes", labels, shapes), ("--dtypes", split_names(args.dtypes), DTYPES),
                                ("--contenders", contenders - {"eager per-step (reference)"}, CONTENDERS),
                                ("--compile-dtypes", split_names(args.compile_dtypes), DTYPES)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    torch.backends.cudnn.benchmark = True
    table = Table(args.out)
    table.add(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; median of {args.repeats}",
              "", "| shape | dtype | pass | contender | median ms | % roofline | peak MiB | vs eager | vs compile |",
              "|---|---|---|---|---:|---:|---:|---:|---:|")
    speedups: Dict[str, List[float]] = {"eager": [], "compile": []}
    for dname in split_names(args.dtypes):
        dtype = DTYPES[dname]
        if device.type == "cpu" and dtype == torch.bfloat16:
            continue
        compile_here = dname in split_names(args.compile_dtypes)

        def wanted(k: str) -> bool:
            return k in contenders and (k != "torch.compile(reference)" or compile_here)

        rates = machine_rates(device, dtype)
        for label in labels:
            s = shapes[label]
            for train in (False, True):
                fns = layer_contenders(s, dtype, device, train, wanted)
                times = median_times(fns, device, args.repeats)
                cost = cbm_costs(s, dtype, train)
                roof = max(cost["flops"] / rates["flops"], cost["bytes"] / rates["bytes"])
                for k, t in times.items():
                    mem = peak_memory(fns[k], device)
                    table.add(f"| {label} {s} | {dname} | {'fwd+bwd' if train else 'fwd'} | {k} | "
                              f"{t * 1e3:.3f} | {100 * roof / t:.1f} | {'' if mem is None else f'{mem:.0f}'} | "
                              f"{ratio(times, 'authors eager', t)} | {ratio(times, 'torch.compile(reference)', t)} |")
                best = min((t for k, t in times.items() if k in COMPILED), default=None)
                if train and best is not None:
                    for key, base in (("eager", "authors eager"), ("compile", "torch.compile(reference)")):
                        if base in times:
                            speedups[key].append(times[base] / best)
        if not args.no_cells:
            for label in labels:
                if label in (CELL_SHAPES_QUICK if args.quick else CELL_SHAPES):
                    table.add(*cell_rows(label, shapes[label], dtype, device, args.repeats))
        if args.no_stack:
            continue
        stack = stack_contenders(device, dtype, args.quick, wanted)
        stimes = median_times(stack, device, max(3, args.repeats // 4))
        for k, t in stimes.items():
            mem = peak_memory(stack[k], device)
            table.add(f"| 15-layer CBM train step | {dname} | train | {k} | {t * 1e3:.3f} | | "
                      f"{'' if mem is None else f'{mem:.0f}'} | {ratio(stimes, 'eager per-step (reference)', t)} | |")
    compiled = ", ".join(k for k in COMPILED if k in contenders)
    for k, v in speedups.items():
        if v:
            table.add("", f"geomean fwd+bwd vs {'eager' if k == 'eager' else 'torch.compile'}: "
                          f"{math.exp(sum(map(math.log, v)) / len(v)):.2f}x  (best of {compiled} per shape, "
                          f"{len(v)} shapes)")


if __name__ == "__main__":
    main()
