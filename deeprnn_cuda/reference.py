"""The reference CBM layer: the per-step loop of DESIGN.md section 1, written for clarity.

It is the ground truth every other backend is tested against, so it stays obviously right:
no fusion, no precomputation, autograd does the backward.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CBM layer over a sequence, one step at a time; arguments already validated, ``c0`` given.

    ``x``: ``(T, B, C_in, H, W)``; returns ``(o, c)``, both ``(T, B, C, H, W)``.
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
    return torch.stack(outputs), torch.stack(states)
