"""What every compiled CBM op pair shares, whatever computes it (the C++ extension or Triton).

Each backend exposes a forward op ``(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t,
merge) -> (o, c, r)`` (``r = act_r(conv(x, W_r) + b_r)`` is returned for backward only) and a backward op
``(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge) -> (dx, dW_r, db_r, dW_t,
db_t, dc0)``. Here: their fake (meta) kernels and the autograd formula connecting them.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_op_args, check_op_backward_args


def cbm_forward_fake(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge):
    """Shapes of ``(o, c, r)``: each ``(T, B, C, H, W)``. Validates like the real kernels, so that a mixed-device
    call (dispatched here for its meta tensor) and tracing under ``torch.compile`` raise the same ValueError."""
    s = check_op_args(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge)
    shape = (s.T, s.B, s.C, s.H, s.W)
    return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape)


def cbm_inference_fake(x, weight_r, bias_r, weight_t, bias_t, c0, act_r, act_t, merge, all_states=True):
    """Shapes of ``(o, c)`` of the inference op (no r): each ``(T, B, C, H, W)``; without ``all_states`` c is the
    final state alone, ``c[-1:]``."""
    o, c, _ = cbm_forward_fake(x, weight_r, bias_r, weight_t, bias_t, c0, None, act_r, act_t, merge)
    return o, c if all_states else c[-1:].clone()


def cbm_backward_fake(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge):
    """The six gradients, shaped like x, weight_r, bias_r (C,), weight_t, bias_t (C,), c0 and, like every real
    backward kernel's, contiguous whatever the inputs' layouts (a transposed x, a channels_last c0)."""
    C = check_op_backward_args(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge).C
    return (
        x.new_empty(x.shape),
        weight_r.new_empty(weight_r.shape),
        weight_r.new_empty(C),
        weight_t.new_empty(weight_t.shape),
        weight_t.new_empty(C),
        c0.new_empty(c0.shape),
    )


def register_cbm_autograd(forward_op: str, backward_op: Callable) -> None:
    """Make ``forward_op`` (a qualified op name) differentiable through ``backward_op``."""

    def setup_context(ctx, inputs, output):
        x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge = inputs
        _, c, r = output
        ctx.mark_non_differentiable(r)  # saved for backward only: a gradient into it would be silently dropped
        # Unused outputs (r always, often c) must reach backward as None, not as (T, B, C, H, W) zeros: that
        # would cost two activation-sized buffers per layer in the training step's peak memory.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight_r, weight_t, c0, r, c, td_mask)
        ctx.codes = (act_r, act_t, merge)
        ctx.has_bias = (bias_r is not None, bias_t is not None)

    def backward(ctx, grad_o, grad_c, grad_r):
        x, weight_r, weight_t, c0, r, c, td_mask = ctx.saved_tensors
        # r is non-differentiable, so grad_r is always None. A missing
        # gradient becomes a broadcast zero and an expanded one (from .sum()) stays expanded: the kernels
        # read strided gradients, so neither costs a (T, B, C, H, W) buffer.
        grad_o = c.new_zeros(()).expand_as(c) if grad_o is None else grad_o
        grad_c = c.new_zeros(()).expand_as(c) if grad_c is None else grad_c
        dx, dw_r, db_r, dw_t, db_t, dc0 = backward_op(
            grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, *ctx.codes
        )
        has_bias_r, has_bias_t = ctx.has_bias
        return (
            dx, dw_r, db_r if has_bias_r else None, dw_t, db_t if has_bias_t else None, dc0,
            None, None, None, None,
        )

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
