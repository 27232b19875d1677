"""The peak-memory measure of ``benchmarks.memory`` against allocations of known size."""
import torch

from benchmarks.memory import peak_bytes


def test_peak_counts_a_transient_buffer_and_ignores_what_was_held_before():
    held = torch.ones(1024, 1024)  # allocated before the measured step: not counted

    def step():
        transient = torch.empty(1000, 1000)  # 4,000,000 bytes, freed before the step ends
        kept = held[:10].clone()  # 40,960 bytes, still alive at the peak
        del transient
        return kept

    assert peak_bytes(step) == 4_000_000 + 40_960


def test_every_cell_has_a_peak_per_contender():
    from benchmarks.cases import BENCH_CELLS, Shape
    from benchmarks.memory import training_step_peaks

    shape = Shape(T=3, B=2, C_in=2, C=3, H=5, W=4)
    for cell in BENCH_CELLS:
        peaks = training_step_peaks(shape, cell)
        assert "reference" in peaks and len(peaks) >= 2, (cell, peaks)
        assert all(p > 0 for p in peaks.values()), (cell, peaks)
