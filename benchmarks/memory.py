"""Peak CPU memory of one training step (forward + backward) per cell and contender: ``python -m benchmarks.memory``.

The peak is the largest total of bytes allocated through PyTorch's CPU allocator and not yet freed during the
step, from the allocation and free events the profiler records with ``profile_memory=True``. Memory held before
the step (weights, input, the ``.grad`` buffers a warm-up step allocated) is not counted, so the figure is what
the step itself needs: activations saved for backward, workspaces and gradients in flight.
"""
from __future__ import annotations

import argparse
import platform
from typing import Callable, Dict

import torch
from torch._C._autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.cases import BENCH_CELLS, CPU_SHAPES, Shape, cell_contenders, contenders


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak bytes allocated (net of frees) by ``fn`` through the CPU allocator, from the profiler's events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # kineto_results holds the raw allocation events ("[memory]", signed nbytes) in the order they happened.
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if e.device_type() == DeviceType.CPU:
            current += e.nbytes()
            peak = max(peak, current)
    return peak


def training_step_peaks(shape: Shape, cell: str = "cbm") -> Dict[str, int]:
    """Contender name -> peak bytes of one float32 forward + backward (after one warm-up step) of one ``cell``
    layer: for CBM the authors' formulation, the reference and native ops; for ConvLSTM and ConvGRU the per-step
    ``nn.Conv2d`` loop, the reference and native modules."""
    fns = contenders(shape) if cell == "cbm" else cell_contenders(cell, shape, with_reference=True)
    peaks = {}
    for name, fn in fns.items():
        fn(True)  # warm-up: allocates the .grad buffers, initialises oneDNN
        peaks[name] = peak_bytes(lambda: fn(True))
    return peaks


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, float32, peak bytes of one fwd+bwd step via the CPU allocator")
    print("| shape | cell | contender | peak MiB | vs reference |")
    print("|---|---|---|---:|---:|")
    for cell in BENCH_CELLS:
        for shape in CPU_SHAPES:
            peaks = training_step_peaks(shape, cell)
            for name, peak in peaks.items():
                print(f"| {shape} | {cell} | {name} | {peak / 2**20:.2f} | {peak / peaks['reference']:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
