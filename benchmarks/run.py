"""Side-by-side CPU tables: ``python -m benchmarks.run [--repeats N] [--cells]``.

Default: the CBM backends against the authors' per-step formulation. ``--cells``: every cell (CBM, ConvLSTM,
ConvGRU), its native module against its per-step ``nn.Conv2d`` loop, train step and inference.
Contenders run interleaved (one call of each per round) so that drifts in machine load hit them alike;
the tables report medians and speed-ups.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.cases import BENCH_CELLS, CPU_SHAPES, LOOP, cell_contenders, contenders


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds per case (default 30)")
    parser.add_argument("--cells", action="store_true", help="the per-cell table: native vs per-step loop")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32, median of {args.repeats} interleaved runs")
    if args.cells:
        cell_table(args.repeats)
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


if __name__ == "__main__":
    main()
