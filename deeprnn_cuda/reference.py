"""The reference layer of every cell: one step at a time, no fusion, autograd does the backward; the ground truth
of every backend.

They live here, below both the backend registry (:mod:`deeprnn_cuda.backends`, whose ``"reference"`` backend and
fallback they are) and the cell modules (which call the registry), so that neither imports the other's module in
a circle. Each is also importable from its cell's module (:mod:`deeprnn_cuda.cbm`, :mod:`deeprnn_cuda.convlstm`,
:mod:`deeprnn_cuda.convgru`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "cbm_layer_ref", "convgru_layer_ref", "convlstm_layer_ref"]

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def cbm_layer_ref(
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
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference CBM layer: one step at a time, no fusion, autograd does the backward; arguments already
    validated, ``c0`` given.

    ``x``: ``(T, B, C_in, H, W)``; returns ``(o, c)``, both ``(T, B, C, H, W)`` (``all_states=False``: c is
    ``c[-1:]``).
    Temporal Dropout detaches ``x_t`` on the T unit's input where ``td_mask`` is True
    (``(T,)``: the whole step; ``(T, B)``: per sample), as the authors' code does.
    """
    pad_r = weight_r.shape[-1] // 2
    pad_t = weight_t.shape[-1] // 2
    f_r, f_t = ACTIVATIONS[act_r], ACTIVATIONS[act_t]
    c = c0
    outputs, states = [], []
    for t in range(x.shape[0]):
        x_t = x[t]
        x_for_t = x_t
        if td_mask is not None:
            drop = td_mask[t].view(-1, 1, 1, 1)  # (1 or B, 1, 1, 1)
            x_for_t = torch.where(drop, x_t.detach(), x_t)
        r = f_r(F.conv2d(x_t, weight_r, bias_r, padding=pad_r))
        c = f_t(F.conv2d(torch.cat([x_for_t, c], dim=1), weight_t, bias_t, padding=pad_t))
        outputs.append(r * c if merge == "mul" else r + c)
        states.append(c)
    states = torch.stack(states)
    return torch.stack(outputs), states if all_states else states[-1:]


def convlstm_layer_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], h0: torch.Tensor, c0: torch.Tensor,
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference ConvLSTM layer: one step at a time, as ndrplz/ConvLSTM_pytorch's cell computes it; no
    fusion, autograd does the backward. Arguments already validated, ``h0`` and ``c0`` given.

    Returns ``(h, c)``, each ``(T, B, C, H, W)`` (``all_states=False``: c is ``c[-1:]``).
    """
    T, B, _, H, W = x.shape
    C = weight.shape[0] // 4
    if T == 0:
        return x.new_empty(0, B, C, H, W), x.new_empty(0, B, C, H, W)
    h, c = h0, c0
    hs, cs = [], []
    for t in range(T):
        a = F.conv2d(torch.cat([x[t], h], dim=1), weight, bias, padding=weight.shape[-1] // 2)
        a_i, a_f, a_o, a_g = torch.split(a, C, dim=1)
        c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        h = torch.sigmoid(a_o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs) if all_states else c.unsqueeze(0)


def convgru_layer_ref(
    x: torch.Tensor,
    weight_x: torch.Tensor,
    bias_x: Optional[torch.Tensor],
    weight_h: torch.Tensor,
    bias_h: Optional[torch.Tensor],
    h0: torch.Tensor,
) -> torch.Tensor:
    """The reference ConvGRU layer: one step at a time, no fusion, autograd does the backward. Arguments already
    validated, ``h0`` given. Returns ``h (T, B, C, H, W)``."""
    T, B, _, H, W = x.shape
    C = weight_h.shape[1]
    if T == 0:
        return x.new_empty(0, B, C, H, W)
    pad_x, pad_h = weight_x.shape[-1] // 2, weight_h.shape[-1] // 2
    b_hzr, b_hn = (None, None) if bias_h is None else (bias_h[: 2 * C], bias_h[2 * C:])
    h = h0
    hs = []
    for t in range(T):
        a_z, a_r, a_n = torch.split(F.conv2d(x[t], weight_x, bias_x, padding=pad_x), C, dim=1)
        u_z, u_r = torch.split(F.conv2d(h, weight_h[: 2 * C], b_hzr, padding=pad_h), C, dim=1)
        z, r = torch.sigmoid(a_z + u_z), torch.sigmoid(a_r + u_r)
        n = torch.tanh(a_n + F.conv2d(r * h, weight_h[2 * C:], b_hn, padding=pad_h))
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs)
