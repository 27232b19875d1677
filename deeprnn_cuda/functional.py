"""The functional CBM layer: one entry point, every backend behind it."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._checks import check_cbm_args
from .backends import resolve_backend


def cbm_layer(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: Optional[torch.Tensor] = None,
    *,
    td_mask: Optional[torch.Tensor] = None,
    act_r: str = "relu",
    act_t: str = "sigmoid",
    merge: str = "mul",
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run one Context Bridge Module layer over a whole sequence.

    Args:
        x: input sequence ``(T, B, C_in, H, W)``.
        weight_r: representation unit R, ``(C, C_in, k_r, k_r)``; ``bias_r``: ``(C,)`` or None.
        weight_t: temporal unit T, ``(C, C_in + C, k_t, k_t)``, convolving ``cat([x_t, c_{t-1}], dim=1)``;
            ``bias_t``: ``(C,)`` or None.
        c0: initial state ``(B, C, H, W)``; None means zeros.
        td_mask: Temporal Dropout, bool ``(T,)`` (one coin per step) or ``(T, B)`` (one per sample).
            Where True, the gradient from T back into ``x_t`` is cut; the forward pass is unchanged.
        act_r: ``"relu"``, ``"tanh"`` or ``"identity"``. act_t: ``"sigmoid"`` or ``"relu"``.
        merge: ``"mul"`` (``o = r * c``) or ``"add"`` (``o = r + c``).
        backend: ``"auto"``, ``"reference"``, ``"native"`` or ``"triton"``. ``"auto"`` takes the compiled
            backend for the device and dtype; where several run (CUDA: native and Triton), the fastest for the
            shape, measured on the first call with it (see :mod:`deeprnn_cuda.autotune`).

    Returns:
        ``(o, c)``: outputs and the state after every step, both ``(T, B, C, H, W)``; ``c[-1]`` is the
        final state. Odd square kernels, stride 1, zero "same" padding. Under ``torch.autocast`` the layer
        runs in the autocast dtype, like the convolutions it is made of. An empty sequence, batch or image
        (T, B, H or W zero) gives empty outputs and zero gradients; zero channels (C_in or C) raise ``ValueError``.
    """
    x, weight_r, bias_r, weight_t, bias_t, c0 = _autocast(x, weight_r, bias_r, weight_t, bias_t, c0)
    s = check_cbm_args(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge)
    impl = resolve_backend(backend, x)
    if s.T * s.B * s.H * s.W == 0:
        return _empty_result(x, (s.T, s.B, s.C, s.H, s.W), (x, weight_r, bias_r, weight_t, bias_t, c0))
    if c0 is None:
        c0 = x.new_zeros(s.B, s.C, s.H, s.W)
    return impl(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, act_r=act_r, act_t=act_t, merge=merge)


def _empty_result(
    x: torch.Tensor, shape: Tuple[int, ...], inputs: Tuple[Optional[torch.Tensor], ...]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(o, c)`` of ``shape`` that still belong to the autograd graph of ``inputs``, so that backward
    gives every input a zero gradient (what the reference gives for an empty batch) instead of failing."""
    o, c = x.new_empty(shape), x.new_empty(shape)
    if not torch.is_grad_enabled():
        return o, c
    zeros = [t.sum() * 0 for t in inputs if t is not None and t.requires_grad]
    if not zeros:
        return o, c
    zero = torch.stack(zeros).sum()
    return o + zero, c + zero


def _autocast(x: object, *tensors: Optional[torch.Tensor]) -> Tuple[object, ...]:
    """Cast to the autocast dtype as ``conv2d`` would: floating tensors other than float64."""
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda"):
        return (x, *tensors)
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: object) -> object:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t

    return tuple(cast(t) for t in (x, *tensors))
