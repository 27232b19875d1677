"""The Triton backend's custom ops: ``deeprnn_triton::cbm_forward`` and ``deeprnn_triton::cbm_backward``.

Mirrors :mod:`deeprnn_cuda._native`: the forward op returns ``(o, c, r)`` (``r = act_r(P_r)`` is saved
for backward only), the backward is its own op, and ``register_fake`` + ``register_autograd`` make both
compose with autograd and ``torch.compile``. ``torch.library.custom_op`` rather than ``triton_op``:
the latter fails opcheck's fake-tensor test under the Triton interpreter (docs/design.md section 6).

What runs where:

* ATen: the input projection for all ``T*B`` images at once (``conv(x, W_r) + b_r`` and
  ``conv(x, W_tx) + b_t``, one convolution when ``k_r == k_t``), and after the backward loop the batched
  weight/input gradients (``aten.convolution_backward``): ``dW_r, db_r, dW_tx, db_t, dW_tc`` and
  ``dx = convT(dP_r, W_r) + convT(keep * dG, W_tx)``.
* Triton (:mod:`.kernels`): the sequential part, forward and backward, with the recurrent convolution
  fused into the epilogue.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_op_args, check_op_backward_args, td_keep_mask
from .._op_autograd import cbm_backward_fake, cbm_forward_fake, register_cbm_autograd
from . import kernels


def _input_projection(x, weight_r, bias_r, weight_t, bias_t):
    """P_r = conv(x, W_r) + b_r and P_x = conv(x, W_tx) + b_t over all T*B images.

    Returns ``(P_r, P_x, image_stride_r, image_stride_x)``; ``P_r``/``P_x`` may be channel slices of one
    ``(T*B, 2C, H, W)`` tensor (the kernels take the image stride).
    """
    T, B, C_in, H, W = x.shape
    C = weight_r.shape[0]
    xf = x.reshape(T * B, C_in, H, W)
    w_tx = weight_t[:, :C_in]
    k_r, k_t = weight_r.shape[-1], weight_t.shape[-1]
    if k_r == k_t:
        w = torch.cat([weight_r, w_tx], 0)
        if bias_r is None and bias_t is None:
            bias = None
        else:
            bias = torch.cat([
                bias_r if bias_r is not None else weight_r.new_zeros(C),
                bias_t if bias_t is not None else weight_t.new_zeros(C),
            ])
        # contiguous: a channels_last weight makes conv2d answer in channels_last, and the kernels read NCHW images
        p = F.conv2d(xf, w, bias, padding=k_r // 2).contiguous()
        return p[:, :C], p[:, C:], 2 * C * H * W, 2 * C * H * W
    p_r = F.conv2d(xf, weight_r, bias_r, padding=k_r // 2).contiguous()
    p_x = F.conv2d(xf, w_tx, bias_t, padding=k_t // 2).contiguous()
    return p_r, p_x, C * H * W, C * H * W


def device_guard(t: Tensor) -> ContextManager:
    """Make ``t``'s GPU the current device: Triton launches (and picks its stream) on the current device, so a
    tensor on ``cuda:1`` while ``cuda:0`` is current would otherwise be read from the wrong GPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@torch.library.custom_op("deeprnn_triton::cbm_forward", mutates_args=())
def cbm_forward(
    x: Tensor,
    weight_r: Tensor,
    bias_r: Optional[Tensor],
    weight_t: Tensor,
    bias_t: Optional[Tensor],
    c0: Tensor,
    td_mask: Optional[Tensor],
    act_r: int,
    act_t: int,
    merge: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """CBM forward over the sequence: returns ``(o, c, r)``, each ``(T, B, C, H, W)``."""
    # Direct callers get cbm_layer's ValueErrors: the kernels index with these sizes and cannot check bounds.
    check_op_args(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge)
    with device_guard(x):
        return _forward(x, weight_r, bias_r, weight_t, bias_t, c0, act_r, act_t, merge)


def _forward(x, weight_r, bias_r, weight_t, bias_t, c0, act_r, act_t, merge):
    T, B, C_in, H, W = x.shape
    C = weight_r.shape[0]
    o = x.new_empty(T, B, C, H, W)
    c = torch.empty_like(o)
    r = torch.empty_like(o)
    if o.numel() == 0:  # nothing to compute, and no zero-size grid to launch
        return o, c, r
    x = x.contiguous()
    c0 = c0.contiguous()
    p_r, p_x, s_r, s_x = _input_projection(x, weight_r, bias_r, weight_t, bias_t)
    kernels.forward_recurrence(p_r, p_x, s_r, s_x, weight_t[:, C_in:], c0, c, o, r, act_r, act_t, merge)
    return o, c, r


cbm_forward.register_fake(cbm_forward_fake)


def conv_bwd(grad: Tensor, inp: Tensor, weight: Tensor, bias: bool, mask: List[bool]):
    """``aten.convolution_backward`` of a stride-1 "same" convolution: ``(d_input, d_weight, d_bias)`` as
    ``mask`` selects."""
    k = weight.shape[-1]
    return torch.ops.aten.convolution_backward(
        grad, inp, weight, [weight.shape[0]] if bias else None,
        [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1, mask,
    )


def recurrent_weight_grad(d: Tensor, h0: Tensor, h: Tensor, weight: Tensor) -> Tensor:
    """``dW`` of ``conv(h_{t-1}, weight)`` summed over steps, from ``d`` (T*B images): ``h_{t-1}`` is
    ``h0`` for the first step and ``h[:-1]`` after it (no concatenated copy)."""
    T, B, C, H, W = h.shape
    dw = conv_bwd(d[:B], h0, weight, False, [False, True, False])[1]
    if T > 1:
        dw = dw + conv_bwd(d[B:], h[:-1].reshape((T - 1) * B, C, H, W), weight, False, [False, True, False])[1]
    return dw


@torch.library.custom_op("deeprnn_triton::cbm_backward", mutates_args=())
def cbm_backward(
    grad_o: Tensor,
    grad_c: Tensor,
    x: Tensor,
    weight_r: Tensor,
    weight_t: Tensor,
    c0: Tensor,
    r: Tensor,
    c: Tensor,
    td_mask: Optional[Tensor],
    act_r: int,
    act_t: int,
    merge: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dW_r, db_r, dW_t, db_t, dc0)`` of the CBM layer (TD cuts only ``dx``'s T path)."""
    check_op_backward_args(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge)
    with device_guard(x):
        return _backward(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge)


def _backward(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge):
    T, B, C_in, H, W = x.shape
    C = weight_r.shape[0]
    if c.numel() == 0:  # an empty sequence, batch or image: zero gradients
        return (torch.zeros_like(x), torch.zeros_like(weight_r), weight_r.new_zeros(C), torch.zeros_like(weight_t),
                weight_t.new_zeros(C), torch.zeros_like(c0))
    x = x.contiguous()
    grad_o, grad_c, c, r, c0 = (t.contiguous() for t in (grad_o, grad_c, c, r, c0))
    w_tx = weight_t[:, :C_in].contiguous()
    w_tc = weight_t[:, C_in:]
    dg = torch.empty(T, B, C, H, W, device=x.device, dtype=torch.float32)  # float32 state math
    dpr = torch.empty_like(c)
    dc0 = torch.empty_like(c0)
    kernels.backward_recurrence(grad_o, grad_c, c, r, w_tc, dg, dpr, dc0, act_r, act_t, merge)

    xf = x.reshape(T * B, C_in, H, W)
    dgx = dg.to(x.dtype).reshape(T * B, C, H, W)
    dx_r, dw_r, db_r = conv_bwd(dpr.reshape(T * B, C, H, W), xf, weight_r, True, [True, True, True])
    if td_mask is None:
        dx_t, dw_tx, db_t = conv_bwd(dgx, xf, w_tx, True, [True, True, True])
    else:
        keep = td_keep_mask(td_mask, T, B, x.dtype)
        _, dw_tx, db_t = conv_bwd(dgx, xf, w_tx, True, [False, True, True])
        masked = (dgx.view(T, B, C * H * W) * keep.reshape(T, B, 1)).view(T * B, C, H, W)
        dx_t = conv_bwd(masked, xf, w_tx, False, [True, False, False])[0]
    dw_tc = recurrent_weight_grad(dgx, c0, c, w_tc.contiguous())  # from (c_{t-1}, dG_t)
    dw_t = torch.cat([dw_tx, dw_tc], 1)
    # Contiguous, as the fake kernel says: a weight's own layout (channels_last) carries into
    # convolution_backward's results.
    dx = (dx_r + dx_t).contiguous().view(T, B, C_in, H, W)
    return dx, dw_r.contiguous(), db_r, dw_t, db_t, dc0


cbm_backward.register_fake(cbm_backward_fake)
register_cbm_autograd("deeprnn_triton::cbm_forward", torch.ops.deeprnn_triton.cbm_backward)
