"""What every compiled ConvLSTM / ConvGRU op set shares, whatever computes it: fake (meta) kernels describing the
real outputs exactly (every output is a new contiguous tensor) and the autograd formulas connecting each forward
op to its backward op. Op signatures: csrc/ops.cpp.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._checks import (check_convgru_op_args, check_convgru_op_backward_args, check_convlstm_op_args,
                      check_convlstm_op_backward_args)


def _state(x: torch.Tensor, channels: int) -> torch.Tensor:
    T, B, _, H, W = x.shape
    return x.new_empty(T, B, channels, H, W)


def convlstm_forward_fake(x, weight, bias, h0, c0):
    """``(h, c, gates)``: ``(T, B, C, H, W)`` twice and ``(T, B, 4C, H, W)``."""
    C = check_convlstm_op_args(x, weight, bias, h0, c0).C
    return _state(x, C), _state(x, C), _state(x, 4 * C)


def convlstm_inference_fake(x, weight, bias, h0, c0, all_states=True):
    """``(h, c)``, each ``(T, B, C, H, W)``; without ``all_states`` c is the final state alone, ``c[-1:]``."""
    C = check_convlstm_op_args(x, weight, bias, h0, c0).C
    c = _state(x, C)
    return _state(x, C), c if all_states else c[-1:].clone()


def convlstm_backward_fake(grad_h, grad_c, x, weight, h0, c0, h, c, gates):
    """Gradients of x, weight, bias ``(4C,)``, h0 and c0."""
    check_convlstm_op_backward_args(grad_h, grad_c, x, weight, h0, c0, h, c, gates)
    return (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0]),
            h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def convgru_forward_fake(x, weight_x, bias_x, weight_h, bias_h, h0):
    """``(h, gates)``: ``(T, B, C, H, W)`` and ``(T, B, 3C, H, W)``."""
    C = check_convgru_op_args(x, weight_x, bias_x, weight_h, bias_h, h0).C
    return _state(x, C), _state(x, 3 * C)


def convgru_inference_fake(x, weight_x, bias_x, weight_h, bias_h, h0):
    """``h (T, B, C, H, W)``."""
    return _state(x, check_convgru_op_args(x, weight_x, bias_x, weight_h, bias_h, h0).C)


def convgru_backward_fake(grad_h, x, weight_x, weight_h, h0, h, gates):
    """Gradients of x, weight_x, bias_x ``(3C,)``, weight_h, bias_h ``(3C,)`` and h0."""
    n = 3 * check_convgru_op_backward_args(grad_h, x, weight_x, weight_h, h0, h, gates).C
    return (x.new_empty(x.shape), weight_x.new_empty(weight_x.shape), weight_x.new_empty(n),
            weight_h.new_empty(weight_h.shape), weight_h.new_empty(n), h0.new_empty(h0.shape))


def _zero_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    # A broadcast zero, not a (T, B, C, H, W) buffer: the kernels read strided gradients.
    return like.new_zeros(()).expand_as(like) if grad is None else grad


def register_convlstm_autograd(forward_op: str, backward_op: Callable) -> None:
    """Make ``forward_op`` (a qualified ``convlstm_forward``) differentiable through ``backward_op``."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, h0, c0 = inputs
        h, c, gates = output
        # The gates are saved for backward only, and unused outputs must reach backward as None rather than as
        # zero buffers the size of the activations (as the CBM op: see _op_autograd).
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, h0, c0, h, c, gates)
        ctx.has_bias = bias is not None

    def backward(ctx, grad_h, grad_c, grad_gates):
        # The gates are kept for backward only; the public API never returns them.
        x, weight, h0, c0, h, c, gates = ctx.saved_tensors
        dx, dw, db, dh0, dc0 = backward_op(
            _zero_if_none(grad_h, h), _zero_if_none(grad_c, c), x, weight, h0, c0, h, c, gates
        )
        return dx, dw, db if ctx.has_bias else None, dh0, dc0

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def register_convgru_autograd(forward_op: str, backward_op: Callable) -> None:
    """Make ``forward_op`` (a qualified ``convgru_forward``) differentiable through ``backward_op``."""

    def setup_context(ctx, inputs, output):
        x, weight_x, bias_x, weight_h, bias_h, h0 = inputs
        h, gates = output
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight_x, weight_h, h0, h, gates)
        ctx.has_bias = (bias_x is not None, bias_h is not None)

    def backward(ctx, grad_h, grad_gates):
        x, weight_x, weight_h, h0, h, gates = ctx.saved_tensors
        dx, dwx, dbx, dwh, dbh, dh0 = backward_op(_zero_if_none(grad_h, h), x, weight_x, weight_h, h0, h, gates)
        has_bx, has_bh = ctx.has_bias
        return dx, dwx, dbx if has_bx else None, dwh, dbh if has_bh else None, dh0

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
