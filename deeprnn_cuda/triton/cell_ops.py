"""The Triton backend's ConvLSTM and ConvGRU custom ops (``deeprnn_triton::convlstm_forward``,
``convlstm_backward``, ``convgru_forward``, ``convgru_backward``), with fake kernels and autograd.

Same split as the CBM ops of :mod:`.ops`: ATen runs the input projection for all ``T*B`` images at once
(one convolution; the ConvGRU's ``bias_h`` is folded into it, it is added outside every product) and,
after the backward recurrence, the weight, bias and input gradients batched over steps
(``aten.convolution_backward``); :mod:`.cell_kernels` runs the sequential part with the recurrent
convolutions fused into the gate epilogues. The forward ops also return what backward needs (the LSTM's
gate activations; the GRU's z, r, n and ``r * h_{t-1}``); the public functions drop it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cell_kernels
from .._checks import (check_convgru_op_args, check_convgru_op_backward_args, check_convlstm_op_args,
                       check_convlstm_op_backward_args)
from .ops import conv_bwd, device_guard, recurrent_weight_grad


def _state_dtype(x: Tensor) -> torch.dtype:
    """The kernels' state math and backward buffers: float64 for float64, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------------
# ConvLSTM
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("deeprnn_triton::convlstm_forward", mutates_args=())
def convlstm_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """ConvLSTM forward over the sequence: ``(h, c, gates)``, ``h``/``c`` (T, B, C, H, W) and ``gates``
    (T, B, 4C, H, W): the activations of i, f, o, g, saved for backward."""
    C = check_convlstm_op_args(x, weight, bias, h0, c0).C
    T, B, C_in, H, W = x.shape
    h = x.new_empty(T, B, C, H, W)
    c = torch.empty_like(h)
    gates = x.new_empty(T, B, 4 * C, H, W)
    if h.numel() == 0:  # empty sequence, batch or image: nothing to compute
        return h, c, gates
    with device_guard(x):
        k = weight.shape[-1]
        p = F.conv2d(x.contiguous().view(T * B, C_in, H, W), weight[:, :C_in], bias, padding=k // 2)
        cell_kernels.lstm_forward(p.contiguous(), weight[:, C_in:], h0.contiguous(), c0.contiguous(), h, c, gates)
    return h, c, gates


@convlstm_forward.register_fake
def _(x, weight, bias, h0, c0):
    C = check_convlstm_op_args(x, weight, bias, h0, c0).C
    T, B, _, H, W = x.shape
    return x.new_empty(T, B, C, H, W), x.new_empty(T, B, C, H, W), x.new_empty(T, B, 4 * C, H, W)


@torch.library.custom_op("deeprnn_triton::convlstm_backward", mutates_args=())
def convlstm_backward(grad_h: Tensor, grad_c: Tensor, x: Tensor, weight: Tensor, h0: Tensor, c0: Tensor,
                      h: Tensor, c: Tensor, gates: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dweight, dbias, dh0, dc0)`` of the ConvLSTM layer (``dbias`` even without a bias)."""
    C = check_convlstm_op_backward_args(grad_h, grad_c, x, weight, h0, c0, h, c, gates).C
    T, B, C_in, H, W = x.shape
    if h.numel() == 0:  # empty sequence, batch or image: zero gradients
        return (x.new_zeros(x.shape), weight.new_zeros(weight.shape), weight.new_zeros(4 * C),
                h0.new_zeros(h0.shape), c0.new_zeros(c0.shape))
    with device_guard(x):
        h0, c0 = h0.contiguous(), c0.contiguous()
        da = torch.empty(T, B, 4 * C, H, W, device=x.device, dtype=_state_dtype(x))
        dh0 = torch.empty_like(h0)
        dc0 = torch.empty(B, C, H, W, device=x.device, dtype=da.dtype)
        cell_kernels.lstm_backward(grad_h.contiguous(), grad_c.contiguous(), c.contiguous(), c0,
                                   gates.contiguous(), weight[:, C_in:], da, dh0, dc0)
        dax = da.to(x.dtype).view(T * B, 4 * C, H, W)
        w_x = weight[:, :C_in].contiguous()
        xf = x.contiguous().view(T * B, C_in, H, W)
        dx, dw_x, db = conv_bwd(dax, xf, w_x, True, [True, True, True])
        dw_h = recurrent_weight_grad(dax, h0, h.contiguous(), weight[:, C_in:].contiguous())
        dw = torch.cat([dw_x, dw_h], 1)
    return dx.contiguous().view(x.shape), dw, db, dh0, dc0.to(x.dtype)


@convlstm_backward.register_fake
def _(grad_h, grad_c, x, weight, h0, c0, h, c, gates):
    check_convlstm_op_backward_args(grad_h, grad_c, x, weight, h0, c0, h, c, gates)
    return (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0]),
            h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def _lstm_setup_context(ctx, inputs, output):
    x, weight, bias, h0, c0 = inputs
    h, c, gates = output
    ctx.mark_non_differentiable(gates)  # for backward only, as the native ops' (deeprnn_cuda._cell_autograd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, h0, c0, h, c, gates)
    ctx.has_bias = bias is not None


def _lstm_backward(ctx, grad_h, grad_c, grad_gates):
    x, weight, h0, c0, h, c, gates = ctx.saved_tensors
    # gates is never returned by the public API (grad_gates is always None or zero)
    grad_h = h.new_zeros(()).expand_as(h) if grad_h is None else grad_h
    grad_c = c.new_zeros(()).expand_as(c) if grad_c is None else grad_c
    dx, dw, db, dh0, dc0 = torch.ops.deeprnn_triton.convlstm_backward(grad_h, grad_c, x, weight, h0, c0, h, c, gates)
    return dx, dw, db if ctx.has_bias else None, dh0, dc0


torch.library.register_autograd("deeprnn_triton::convlstm_forward", _lstm_backward,
                                setup_context=_lstm_setup_context)


# ------------------------------------------------------------------------------------------------
# ConvGRU
# ------------------------------------------------------------------------------------------------


def _gru_bias(bias_x: Optional[Tensor], bias_h: Optional[Tensor]) -> Optional[Tensor]:
    """``bias_x + bias_h``: both are added outside every product, so the input projection carries them."""
    if bias_x is None and bias_h is None:
        return None
    if bias_x is None or bias_h is None:
        return bias_x if bias_h is None else bias_h
    return bias_x + bias_h


@torch.library.custom_op("deeprnn_triton::convgru_forward", mutates_args=())
def convgru_forward(x: Tensor, weight_x: Tensor, bias_x: Optional[Tensor], weight_h: Tensor,
                    bias_h: Optional[Tensor], h0: Tensor) -> Tuple[Tensor, Tensor]:
    """ConvGRU forward over the sequence: ``(h, saved)``, ``h`` (T, B, C, H, W) and ``saved``
    (T, B, 4C, H, W): z, r, n and ``r * h_{t-1}``, for backward."""
    C = check_convgru_op_args(x, weight_x, bias_x, weight_h, bias_h, h0).C
    T, B, C_in, H, W = x.shape
    h = x.new_empty(T, B, C, H, W)
    saved = x.new_empty(T, B, 4 * C, H, W)
    if h.numel() == 0:  # empty sequence, batch or image: nothing to compute
        return h, saved
    with device_guard(x):
        k = weight_x.shape[-1]
        p = F.conv2d(x.contiguous().view(T * B, C_in, H, W), weight_x, _gru_bias(bias_x, bias_h),
                     padding=k // 2)
        cell_kernels.gru_forward(p.contiguous(), weight_h, h0.contiguous(), h, saved)
    return h, saved


@convgru_forward.register_fake
def _(x, weight_x, bias_x, weight_h, bias_h, h0):
    C = check_convgru_op_args(x, weight_x, bias_x, weight_h, bias_h, h0).C
    T, B, _, H, W = x.shape
    return x.new_empty(T, B, C, H, W), x.new_empty(T, B, 4 * C, H, W)


@torch.library.custom_op("deeprnn_triton::convgru_backward", mutates_args=())
def convgru_backward(grad_h: Tensor, x: Tensor, weight_x: Tensor, weight_h: Tensor, h0: Tensor, h: Tensor,
                     saved: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dweight_x, dbias_x, dweight_h, dbias_h, dh0)`` of the ConvGRU layer (both bias
    gradients even without biases; they are equal, the biases being summed)."""
    C = check_convgru_op_backward_args(grad_h, x, weight_x, weight_h, h0, h, saved, gate_channels=4).C
    T, B, C_in, H, W = x.shape
    if h.numel() == 0:  # empty sequence, batch or image: zero gradients
        return (x.new_zeros(x.shape), weight_x.new_zeros(weight_x.shape), weight_x.new_zeros(3 * C),
                weight_h.new_zeros(weight_h.shape), weight_h.new_zeros(3 * C), h0.new_zeros(h0.shape))
    with device_guard(x):
        h0, h, saved = h0.contiguous(), h.contiguous(), saved.contiguous()
        dp = torch.empty(T, B, 3 * C, H, W, device=x.device, dtype=_state_dtype(x))
        dh0 = torch.empty_like(h0)
        cell_kernels.gru_backward(grad_h.contiguous(), h, h0, saved, weight_h, dp, dh0)
        dpx = dp.to(x.dtype).view(T * B, 3 * C, H, W)
        xf = x.contiguous().view(T * B, C_in, H, W)
        dx, dw_x, db = conv_bwd(dpx, xf, weight_x.contiguous(), True, [True, True, True])
        dw_zr = recurrent_weight_grad(dpx[:, :2 * C], h0, h, weight_h[:2 * C].contiguous())
        q = saved[:, :, 3 * C:].reshape(T * B, C, H, W)  # r * h_{t-1}
        dw_n = conv_bwd(dpx[:, 2 * C:], q, weight_h[2 * C:].contiguous(), False, [False, True, False])[1]
        dw_h = torch.cat([dw_zr, dw_n], 0)
    return dx.contiguous().view(x.shape), dw_x, db, dw_h, db.clone(), dh0


@convgru_backward.register_fake
def _(grad_h, x, weight_x, weight_h, h0, h, saved):
    C3 = 3 * check_convgru_op_backward_args(grad_h, x, weight_x, weight_h, h0, h, saved, gate_channels=4).C
    return (x.new_empty(x.shape), weight_x.new_empty(weight_x.shape), weight_x.new_empty(C3),
            weight_h.new_empty(weight_h.shape), weight_h.new_empty(C3), h0.new_empty(h0.shape))


def _gru_setup_context(ctx, inputs, output):
    x, weight_x, bias_x, weight_h, bias_h, h0 = inputs
    h, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight_x, weight_h, h0, h, saved)
    ctx.has_bias = (bias_x is not None, bias_h is not None)


def _gru_backward(ctx, grad_h, grad_saved):
    x, weight_x, weight_h, h0, h, saved = ctx.saved_tensors
    grad_h = h.new_zeros(()).expand_as(h) if grad_h is None else grad_h
    dx, dw_x, db_x, dw_h, db_h, dh0 = torch.ops.deeprnn_triton.convgru_backward(grad_h, x, weight_x, weight_h, h0,
                                                                               h, saved)
    has_x, has_h = ctx.has_bias
    return dx, dw_x, db_x if has_x else None, dw_h, db_h if has_h else None, dh0


torch.library.register_autograd("deeprnn_triton::convgru_forward", _gru_backward, setup_context=_gru_setup_context)
