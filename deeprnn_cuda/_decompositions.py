"""Decompositions of the compiled forward ops into the reference layers' aten ops, for exporters.

``torch.onnx.export`` (the default, dynamo-based exporter) decomposes every op it has no ONNX translation for
through ``torch._decomp.decomposition_table``. Registering each ``deeprnn::`` (and ``deeprnn_triton::``) forward
op there as its reference layer (:mod:`deeprnn_cuda.reference`) makes a module built with a compiled backend
export to a standard ONNX graph of convolutions and elementwise ops, unrolled over the traced sequence length.
The fused kernels keep running everywhere else: ``torch.compile`` and ``torch.export`` use their own, smaller
tables, so an exported ``.pt2`` still calls the fused ops.

Each decomposition returns every output of its op, those kept only for backward (CBM's ``r``, the cells' gates)
included, computed as the kernels store them; the exporter then drops those that nothing reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._decomp import register_decomposition

from ._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES
from .reference import ACTIVATIONS, cbm_layer_ref, convgru_layer_ref, convlstm_layer_ref

_ACT_R = {code: name for name, code in ACT_R_CODES.items()}
_ACT_T = {code: name for name, code in ACT_T_CODES.items()}
_MERGE = {code: name for name, code in MERGE_CODES.items()}


def _steps(conv, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``conv`` applied to every step of ``x (T, B, ...)`` at once, back to ``(T, B, ...)``."""
    return conv(x.flatten(0, 1), *args, **kwargs).unflatten(0, x.shape[:2])


def _previous(states: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The state before each step: ``first``, then ``states[:-1]``."""
    return torch.cat([first.unsqueeze(0), states[:-1]])


def _cbm(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge, all_states=True):
    o, c = cbm_layer_ref(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, act_r=_ACT_R[act_r],
                         act_t=_ACT_T[act_t], merge=_MERGE[merge], all_states=all_states)
    return o, c


def cbm_forward(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge):
    """``(o, c, r)`` of ``deeprnn::cbm_forward``."""
    o, c = _cbm(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge)
    r = ACTIVATIONS[_ACT_R[act_r]](_steps(F.conv2d, x, weight_r, bias_r, padding=weight_r.shape[-1] // 2))
    return o, c, r


def cbm_inference(x, weight_r, bias_r, weight_t, bias_t, c0, act_r, act_t, merge, all_states=True):
    """``(o, c)`` of ``deeprnn::cbm_inference``."""
    return _cbm(x, weight_r, bias_r, weight_t, bias_t, c0, None, act_r, act_t, merge, all_states)


def convlstm_forward(x, weight, bias, h0, c0):
    """``(h, c, gates)`` of ``deeprnn::convlstm_forward``; gates are the activations of i, f, o, g."""
    h, c = convlstm_layer_ref(x, weight, bias, h0, c0)
    a = _steps(F.conv2d, torch.cat([x, _previous(h, h0)], dim=2), weight, bias, padding=weight.shape[-1] // 2)
    C = h.shape[2]
    return h, c, torch.cat([torch.sigmoid(a[:, :, :3 * C]), torch.tanh(a[:, :, 3 * C:])], dim=2)


def convlstm_inference(x, weight, bias, h0, c0, all_states=True):
    """``(h, c)`` of ``deeprnn::convlstm_inference``."""
    return convlstm_layer_ref(x, weight, bias, h0, c0, all_states)


def _gru_gates(x, weight_x, bias_x, weight_h, bias_h, h0, h):
    """z, r, n and ``r * h_{t-1}`` of every step, each ``(T, B, C, H, W)``, from the layer's output ``h``."""
    C = h.shape[2]
    pad_x, pad_h = weight_x.shape[-1] // 2, weight_h.shape[-1] // 2
    b_zr, b_n = (None, None) if bias_h is None else (bias_h[:2 * C], bias_h[2 * C:])
    prev = _previous(h, h0)
    a = _steps(F.conv2d, x, weight_x, bias_x, padding=pad_x)
    u = _steps(F.conv2d, prev, weight_h[:2 * C], b_zr, padding=pad_h)
    z, r = torch.sigmoid(a[:, :, :C] + u[:, :, :C]), torch.sigmoid(a[:, :, C:2 * C] + u[:, :, C:])
    rh = r * prev
    n = torch.tanh(a[:, :, 2 * C:] + _steps(F.conv2d, rh, weight_h[2 * C:], b_n, padding=pad_h))
    return z, r, n, rh


def convgru_forward(x, weight_x, bias_x, weight_h, bias_h, h0):
    """``(h, gates)`` of ``deeprnn::convgru_forward``: gates z, r, n ``(T, B, 3C, H, W)``."""
    h = convgru_layer_ref(x, weight_x, bias_x, weight_h, bias_h, h0)
    return h, torch.cat(_gru_gates(x, weight_x, bias_x, weight_h, bias_h, h0, h)[:3], dim=2)


def convgru_inference(x, weight_x, bias_x, weight_h, bias_h, h0):
    """``h`` of ``deeprnn::convgru_inference``."""
    return convgru_layer_ref(x, weight_x, bias_x, weight_h, bias_h, h0)


def triton_convgru_forward(x, weight_x, bias_x, weight_h, bias_h, h0):
    """``(h, saved)`` of ``deeprnn_triton::convgru_forward``: z, r, n and ``r * h_{t-1}`` ``(T, B, 4C, H, W)``."""
    h = convgru_layer_ref(x, weight_x, bias_x, weight_h, bias_h, h0)
    return h, torch.cat(_gru_gates(x, weight_x, bias_x, weight_h, bias_h, h0, h), dim=2)


NATIVE = {"cbm_forward": cbm_forward, "cbm_inference": cbm_inference, "convlstm_forward": convlstm_forward,
          "convlstm_inference": convlstm_inference, "convgru_forward": convgru_forward,
          "convgru_inference": convgru_inference}
"""The decomposition of every forward op of the C++ extension (``deeprnn::``), by op name."""

TRITON = {"cbm_forward": cbm_forward, "convlstm_forward": convlstm_forward, "convgru_forward": triton_convgru_forward}
"""The decomposition of every forward op of the Triton backend (``deeprnn_triton::``), by op name."""


def register(namespace: str, table: dict) -> None:
    """Register ``table``'s decompositions for the ops of ``torch.ops.<namespace>`` (idempotent)."""
    ops = getattr(torch.ops, namespace)
    for name, decomposition in table.items():
        overload = getattr(ops, name).default
        if overload not in torch._decomp.decomposition_table:
            register_decomposition(overload)(decomposition)
