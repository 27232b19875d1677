"""The compiled backend: Python side of the ``deeprnn::`` custom ops defined in ``csrc/``.

The C++ extension registers the op schemas and the CPU (and, when compiled in, CUDA) kernels.
Here we add what PyTorch needs around them: fake kernels for ``torch.compile`` and the autograd
formula, which calls the backward op.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES

BUILD_HINT = (
    "build the extension with `pip install --no-build-isolation -e .` from the repository root "
    "(set CUDA_HOME=/usr/local/cuda to compile the CUDA kernels)"
)

try:
    from . import _C  # noqa: F401  (importing registers the deeprnn:: ops)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as e:  # the extension was not built
    _IMPORT_ERROR = e

CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available() -> bool:
    """True when the compiled extension imported."""
    return _IMPORT_ERROR is None


def unavailable_reason() -> str:
    """Why the native backend is missing (empty when it is available)."""
    if _IMPORT_ERROR is None:
        return ""
    return f"the compiled extension deeprnn_cuda._C is missing ({_IMPORT_ERROR}); {BUILD_HINT}"


def cuda_compiled() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return is_available() and bool(torch.ops.deeprnn.cuda_compiled())


def supports(x: torch.Tensor) -> bool:
    """Whether the native kernels handle ``x``'s device and dtype."""
    if x.device.type == "cpu":
        return x.dtype in CPU_DTYPES
    if x.device.type == "cuda":
        return cuda_compiled() and x.dtype in CUDA_DTYPES
    return False


def cbm_layer_native(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: torch.Tensor,
    *,
    td_mask: Optional[torch.Tensor] = None,
    act_r: str = "relu",
    act_t: str = "sigmoid",
    merge: str = "mul",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CBM layer on the compiled ops; same contract as :func:`deeprnn_cuda.reference.cbm_layer_ref`."""
    o, c, _ = torch.ops.deeprnn.cbm_forward(
        x, weight_r, bias_r, weight_t, bias_t, c0, td_mask,
        ACT_R_CODES[act_r], ACT_T_CODES[act_t], MERGE_CODES[merge],
    )
    return o, c


if is_available():

    @torch.library.register_fake("deeprnn::cbm_forward")
    def _cbm_forward_fake(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge):
        T, B, _, H, W = x.shape
        shape = (T, B, weight_r.shape[0], H, W)
        return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape)

    @torch.library.register_fake("deeprnn::cbm_backward")
    def _cbm_backward_fake(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge):
        C = weight_r.shape[0]
        return (
            torch.empty_like(x),
            torch.empty_like(weight_r),
            weight_r.new_empty(C),
            torch.empty_like(weight_t),
            weight_t.new_empty(C),
            torch.empty_like(c0),
        )

    def _setup_context(ctx, inputs, output):
        x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge = inputs
        _, c, r = output
        ctx.save_for_backward(x, weight_r, weight_t, c0, r, c, td_mask)
        ctx.codes = (act_r, act_t, merge)
        ctx.has_bias = (bias_r is not None, bias_t is not None)

    def _backward(ctx, grad_o, grad_c, grad_r):
        x, weight_r, weight_t, c0, r, c, td_mask = ctx.saved_tensors
        # r is saved for backward only; the public API never returns it, so grad_r is always zero.
        grad_o = torch.zeros_like(c) if grad_o is None else grad_o
        grad_c = torch.zeros_like(c) if grad_c is None else grad_c
        dx, dw_r, db_r, dw_t, db_t, dc0 = torch.ops.deeprnn.cbm_backward(
            grad_o.contiguous(), grad_c.contiguous(), x, weight_r, weight_t, c0, r, c, td_mask, *ctx.codes
        )
        has_bias_r, has_bias_t = ctx.has_bias
        return (
            dx, dw_r, db_r if has_bias_r else None, dw_t, db_t if has_bias_t else None, dc0,
            None, None, None, None,
        )

    torch.library.register_autograd("deeprnn::cbm_forward", _backward, setup_context=_setup_context)
