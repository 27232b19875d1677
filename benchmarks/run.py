"""Side-by-side CPU tables: ``python -m benchmarks.run [--repeats N] [--cells | --functional [--quick]]``.

Default: the CBM backends against the authors' per-step formulation. ``--cells``: every cell (CBM, ConvLSTM,
ConvGRU), its native module against its per-step ``nn.Conv2d`` loop, train step and inference. ``--functional``:
every cell against what a user would write instead, the plain ``F.conv2d`` loop and ``torch.compile`` of it
(static shapes; the compile, with one checked call, is timed apart and reported in seconds), beside the per-step
``nn.Conv2d`` loop, and the convolution floor (``benchmarks/contenders.py``): native / floor says how far the layer
is from the time of its unavoidable convolutions. Contenders run interleaved (one call of each per round, the
floor's parts included) so that drifts in machine load hit them alike; the tables report medians and ratios, and
the header the host's CPU model, threads, torch, dtype and load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from benchmarks.cases import BENCH_CELLS, CPU_SHAPES, LOOP, Shape, cell_contenders, contenders
from benchmarks.contenders import COMPILED, FLOOR, FLOOR_PARTS, FUNCTIONAL, row_contenders

QUICK_SHAPE = Shape(3, 2, 4, 5, 6, 7)  # --quick: checks that the --functional table runs, times nothing useful


def measure(shape, train: bool, repeats: int, warmup: int = 3, fns=None):
    fns = contenders(shape) if fns is None else fns
    for fn in fns.values():
        for _ in range(warmup):
            fn(train)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(train)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_model() -> str:
    """The CPU's model name and vector extensions, from /proc/cpuinfo (Linux; else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]  # the first processor's block
    except OSError:
        return platform.processor() or platform.machine()
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    info = {key.strip(): value.strip() for key, value in pairs}
    flags = info.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{info.get('model name', '?')} ({info.get('vendor_id', '?')}, {simd}, {os.cpu_count()} CPUs)"


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds per case (default 30)")
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--cells", action="store_true", help="the per-cell table: native vs per-step loop")
    tables.add_argument("--functional", action="store_true",
                        help="the per-cell table against the plain functional loop, torch.compile of it and the "
                             "convolution floor (issue 27)")
    parser.add_argument("--quick", action="store_true", help=f"--functional on one tiny shape ({QUICK_SHAPE}) only")
    args = parser.parse_args()
    if args.quick and not args.functional:
        parser.error("--quick goes with --functional")
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, float32, median of "
          f"{args.repeats} interleaved runs, load average {load_average()} (1/5/15 min) at the start")
    if args.cells:
        cell_table(args.repeats)
        return
    if args.functional:
        functional_table(args.repeats, [QUICK_SHAPE] if args.quick else CPU_SHAPES)
        print(f"# load average {load_average()} at the end")
        return
    print("| shape | pass | contender | median ms | speed-up vs authors |")
    print("|---|---|---|---:|---:|")
    for shape in CPU_SHAPES:
        for train in (False, True):
            medians = measure(shape, train, args.repeats)
            base = medians["authors (per-step eager)"]
            for name, t in medians.items():
                print(f"| {shape} | {'fwd+bwd' if train else 'fwd'} | {name} | {t * 1e3:.2f} | {base / t:.2f}x |")


def cell_table(repeats: int) -> None:
    """Every cell's native module against its per-step loop; inference runs under torch.no_grad()."""
    print(f"| shape | cell | pass | {LOOP} ms | native ms | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for shape in CPU_SHAPES:
        for cell in BENCH_CELLS:
            for train in (True, False):
                medians = measure(shape, train, repeats, fns=cell_contenders(cell, shape))
                loop, native = medians[LOOP], medians.get("native")
                native_ms, ratio = ("n/a", "n/a") if native is None else (f"{native * 1e3:.2f}", f"{loop / native:.2f}x")
                print(f"| {shape} | {cell} | {'train' if train else 'inference'} | {loop * 1e3:.2f} | {native_ms} | "
                      f"{ratio} |", flush=True)


def functional_table(repeats: int, shapes) -> None:
    """Every cell's native module against the plain functional loop and its ``torch.compile``, the per-step
    ``nn.Conv2d`` loop beside them, and the floor; then the floor's parts per row."""
    print(f"| shape | cell | pass | {LOOP} ms | {FUNCTIONAL} ms | {COMPILED} ms | native ms | native vs loop | "
          f"native vs compiled | floor ms | native / floor | compile s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    parts_rows = []
    for shape in shapes:
        for cell in BENCH_CELLS:
            for train in (True, False):
                fns, compile_seconds = row_contenders(cell, shape, train)
                medians = measure(shape, train, repeats, fns=fns)
                parts = {name[len(FLOOR):]: t for name, t in medians.items() if name.startswith(FLOOR)}
                floor, native = sum(parts.values()), medians.get("native")
                loop, compiled = medians[FUNCTIONAL], medians[COMPILED]
                row = f"| {shape} | {cell} | {'train' if train else 'inference'} | "
                parts_rows.append(row + " | ".join(f"{parts[name] * 1e3:.2f}" if name in parts else "-"
                                                   for name in FLOOR_PARTS) + " |")
                fields = ["n/a" if t is None else f"{t * 1e3:.2f}" for t in (medians[LOOP], loop, compiled, native)]
                fields += ["n/a"] * 2 if native is None else [f"{loop / native:.2f}x", f"{compiled / native:.2f}x"]
                fields += [f"{floor * 1e3:.2f}", "n/a" if native is None else f"{native / floor:.2f}",
                           f"{compile_seconds:.1f}"]
                print(row + " | ".join(fields) + " |", flush=True)
    print(f"\n| shape | cell | pass | {' ms | '.join(FLOOR_PARTS)} ms |")
    print("|---|---|---|" + "---:|" * len(FLOOR_PARTS))
    print("\n".join(parts_rows))


if __name__ == "__main__":
    main()
