"""Side-by-side CPU table of the CBM backends: ``python -m benchmarks.run [--repeats N]``.

Contenders run interleaved (one call of each per round) so that drifts in machine load hit them alike;
the table reports medians and the speed-up of every contender over the authors' per-step formulation.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.cases import CPU_SHAPES, contenders


def measure(shape, train: bool, repeats: int, warmup: int = 3):
    fns = contenders(shape)
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
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32, median of {args.repeats} interleaved runs")
    print("| shape | pass | contender | median ms | speed-up vs authors |")
    print("|---|---|---|---:|---:|")
    for shape in CPU_SHAPES:
        for train in (False, True):
            medians = measure(shape, train, args.repeats)
            base = medians["authors (per-step eager)"]
            for name, t in medians.items():
                print(f"| {shape} | {'fwd+bwd' if train else 'fwd'} | {name} | {t * 1e3:.2f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
