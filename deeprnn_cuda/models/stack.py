"""One constructor for the recurrent part of every model: a CBM, ConvLSTM or ConvGRU stack.

Every model in :mod:`deeprnn_cuda.models` takes ``cell="cbm"|"convlstm"|"convgru"`` and ``backend=...`` and
builds its recurrent layers here, so the cells are swapped without touching the rest of the model; every cell
runs on the backend's kernels.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch.nn as nn

from .._checks import BACKENDS, check_choice
from ..modules import CBM, ConvGRU, ConvLSTM

CELLS = ("cbm", "convlstm", "convgru")
IntOrList = Union[int, Sequence[int]]


def recurrent_stack(
    cell: str,
    in_channels: int,
    hidden_channels: IntOrList,
    num_layers: int,
    kernel_size: IntOrList = 3,
    shortcut_every: int = 0,
    backend: str = "auto",
    td_rate: float = 0.0,
) -> Union[CBM, ConvLSTM, ConvGRU]:
    """A ``(T, B, C, H, W)``-in, ``(T, B, C', H, W)``-out stack of ``num_layers`` ``cell`` layers.

    Args:
        cell: ``"cbm"`` (Context Bridge Module), ``"convlstm"`` (the paper's baseline) or ``"convgru"``.
        in_channels, hidden_channels, num_layers, kernel_size, shortcut_every: as in :class:`CBM`.
        backend: the cell's kernels (``"auto"``, ``"reference"``, ``"native"``, ``"triton"``).
        td_rate: CBM Temporal Dropout rate (training mode only); must be 0 for the other cells, which have no TD.
    """
    check_choice("cell", cell, CELLS)
    check_choice("backend", backend, BACKENDS)
    if cell == "cbm":
        return CBM(
            in_channels, hidden_channels, kernel_size, num_layers,
            td_rate=td_rate, shortcut_every=shortcut_every, backend=backend,
        )
    if td_rate != 0.0:
        raise ValueError(f"td_rate must be 0 with cell={cell!r} (Temporal Dropout is CBM's), got {td_rate!r}")
    cls = ConvLSTM if cell == "convlstm" else ConvGRU
    return cls(in_channels, hidden_channels, kernel_size, num_layers, shortcut_every=shortcut_every, backend=backend)


def set_backend(model: nn.Module, backend: str) -> None:
    """Switch every recurrent stack inside ``model`` to ``backend``; parameters and state_dict keys are
    unchanged."""
    check_choice("backend", backend, BACKENDS)
    for module in model.modules():
        if isinstance(module, (CBM, ConvLSTM, ConvGRU)):
            module.backend = backend


def set_td_rate(model: nn.Module, td_rate: float) -> None:
    """Set the Temporal Dropout rate of every CBM stack inside ``model`` (a TD schedule's hook)."""
    for module in model.modules():
        if isinstance(module, CBM):
            module.td_rate = td_rate
