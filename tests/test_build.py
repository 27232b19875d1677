"""The build CI tests: the compiled extension is there, and every op has a kernel for every device it was built
for. Without these a broken build passes the CPU suite: the backend lists would shrink to the reference and the
GPU tests skip on a machine with no GPU. Whether a usable CUDA toolkit was missed: tests/test_build_info.py.
"""
import pytest
import torch

from deeprnn_cuda import _native

#: The ops with a kernel per device (csrc/cpu/, csrc/cuda/); the rest of the namespace is device-independent.
DEVICE_OPS = ("cbm_forward", "cbm_backward", "cbm_inference", "convlstm_forward", "convlstm_inference",
              "convlstm_backward", "convgru_forward", "convgru_inference", "convgru_backward")


def test_extension_built():
    assert _native.is_available(), _native.unavailable_reason()


@pytest.mark.parametrize("device", ["CPU", "CUDA"])
def test_every_op_has_a_kernel_for_each_device_built(device):
    if not _native.is_available():
        pytest.fail(_native.unavailable_reason())
    if device == "CUDA" and not _native.cuda_compiled():
        pytest.skip("the extension was built without CUDA kernels (tests/test_build_info.py checks that was right)")
    missing = [op for op in DEVICE_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"deeprnn::{op}", device)]
    assert not missing, f"no {device} kernel for {missing}"
