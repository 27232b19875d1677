"""The per-frame classifier used by the command line: a CBM or ConvLSTM stack and a linear head."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .states import State



class SequenceClassifier(nn.Module):
    """``(T, B, C, H, W)`` frames -> ``(T, B, num_classes)`` logits, one prediction per frame.

    The recurrent stack keeps the spatial size; the head is a linear layer on each frame's flattened
    top-layer output. ``shortcut_every=2`` adds ResNet-style shortcuts every two layers.
    """

    def __init__(
        self,
        cell: str,
        layers: int,
        in_channels: int,
        hidden: int,
        num_classes: int,
        image_size: int,
        kernel_size: int = 3,
        shortcut_every: int = 2,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        from ..models.stack import recurrent_stack

        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.cell = cell
        self.rnn = recurrent_stack(cell, in_channels, hidden, layers, kernel_size, shortcut_every, backend)
        self.head = nn.Linear(hidden * image_size * image_size, num_classes)

    def forward(
        self, x: torch.Tensor, states0: Optional[List[State]] = None, return_states: bool = False
    ) -> Tuple[torch.Tensor, List[State]]:
        """Logits ``(T, B, K)`` and, per layer, the final state (or every step's states if ``return_states``)."""
        if return_states:
            out, _, states = self.rnn(x, states0, return_states=True)
        else:
            out, states = self.rnn(x, states0)
        return self.head(out.flatten(2)), states
