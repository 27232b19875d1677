"""The backend agreement report that `deeprnn demo` prints."""
import torch

from deeprnn_cuda.backend_check import compare_backends
from helpers import TOLERANCES


def test_compare_backends_reports_every_available_backend_in_agreement():
    reports = compare_backends(layers=3, channels=2, frames=3, batch=2, size=5, repeats=1)
    # The compiled backend is required on the CPU (Triton runs only on CUDA here): a build without it fails
    # instead of leaving the reference to agree with itself.
    assert [r.backend for r in reports] == ["reference", "native"]
    assert reports[0].max_rel_error == 0  # the baseline row
    for r in reports:
        assert r.seconds > 0 and r.backend in r.line(reports[0].seconds)
    for r in reports[1:]:
        assert r.max_rel_error <= TOLERANCES[torch.float32], r  # the model runs in float32, TF32 off
