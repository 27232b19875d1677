"""The build CI tests: the compiled extension is there, with its CUDA kernels wherever a toolkit was found.

Without these a broken build passes the CPU suite: the backend lists would shrink to the reference and the GPU
tests skip on a machine with no GPU. A deliberate CPU-only build says so with DEEPRNN_FORCE_CPU=1 (as setup.py
reads it), which waives the CUDA check only.
"""
import os
from pathlib import Path

import pytest
import torch

from deeprnn_cuda import _native


def _nvcc_found() -> bool:
    """An nvcc where setup.py looks first: $CUDA_HOME, else /usr/local/cuda."""
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    return any(h and os.access(Path(h) / "bin" / "nvcc", os.X_OK) for h in homes)


def test_extension_built():
    assert _native.is_available(), _native.unavailable_reason()
    for op in ("cbm_forward", "cbm_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deeprnn::{op}", "CPU"), op


@pytest.mark.skipif(os.environ.get("DEEPRNN_FORCE_CPU") == "1", reason="DEEPRNN_FORCE_CPU=1: CPU-only build intended")
def test_cuda_kernels_compiled_when_a_toolkit_was_found():
    if torch.version.cuda is None or not _nvcc_found():
        pytest.skip(f"no CUDA toolkit for this torch (torch.version.cuda={torch.version.cuda}): CPU-only build")
    assert _native.cuda_compiled(), (
        f"nvcc is present and torch is a CUDA {torch.version.cuda} build, but the extension was built without its "
        "CUDA kernels; rebuild with CUDA_HOME set, or set DEEPRNN_FORCE_CPU=1 if a CPU-only build is intended")
    for op in ("cbm_forward", "cbm_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deeprnn::{op}", "CUDA"), op
