"""Shared test set-up: Triton runs under its interpreter on machines with no GPU, and helpers."""
import os

import torch

# Must be set before any @triton.jit function is defined, i.e. before deeprnn_cuda.triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Test tensors are tiny: intra-op threads only add synchronisation overhead (and on a loaded 2-core
# machine, 1000x slowdowns). Tests that exercise the parallel paths raise the count themselves.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 comparisons are against TF32-off numbers (docs/design.md tolerances)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
