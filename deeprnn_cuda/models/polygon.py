"""Polygon-RNN (Castrejon et al., CVPR 2017) with the deep recurrent part of section 4.2 of the paper.

:class:`PolygonRNNCore` is the recurrent part exactly as Table 5: a plain stack (no shortcuts) of 3x3
CBM or ConvLSTM layers, with biases, reading ``in_channels = 131`` channels per step: 128 image-feature
channels plus three ``28 x 28`` one-hot maps (the two previous vertices and the first one). With these
inputs its parameter counts are Table 6's "# params of RNN" column (see ``PARAMS_OF_RNN``).

:class:`PolygonRNN` adds the rest of Polygon-RNN's decoder around it: a first-vertex branch on the image
features (a 3x3 conv to ``G x G`` logits), the teacher-forced vertex inputs, and a fully connected head
from the last layer's ``8 x G x G`` output to ``G x G + 1`` logits, the extra class being end-of-polygon.
The image-feature CNN (VGG-16 skip features in Polygon-RNN) is not part of it: it takes the features.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.dataset import IGNORE_INDEX
from .stack import recurrent_stack

TABLE5: Dict[int, Tuple[int, ...]] = {
    2: (64, 8),
    5: (128, 128, 64, 32, 8),
    10: (128,) * 5 + (64,) * 3 + (32, 8),
    15: (256,) * 2 + (128,) * 4 + (64,) * 6 + (32,) * 2 + (8,),
}
"""Channels of every recurrent layer, by depth (Table 5: how many layers of 256/128/64/32/8 channels)."""

PARAMS_OF_RNN: Dict[str, Dict[int, float]] = {
    "cbm": {2: 0.20, 5: 1.13, 10: 2.68, 15: 5.85},
    "convlstm": {2: 0.47, 5: 2.94, 10: 7.07, 15: 15.71},
}
"""Table 6, "# params of RNN", in millions."""

VERTEX_CHANNELS = 3


class PolygonRNNCore(nn.Module):
    """The recurrent part of Polygon-RNN per Table 5: ``num_layers`` in (2, 5, 10, 15), no shortcuts.

    ``forward(x, state=None) -> (output, state)`` with ``x (T, B, in_channels, G, G)`` and ``output
    (T, B, 8, G, G)``; ``state`` is the stack's ``c_n`` (feed it back to continue the sequence).
    """

    def __init__(
        self, num_layers: int, cell: str = "cbm", in_channels: int = 131, backend: str = "auto", td_rate: float = 0.0
    ) -> None:
        super().__init__()
        if num_layers not in TABLE5:
            raise ValueError(f"num_layers must be one of {sorted(TABLE5)} (Table 5), got {num_layers!r}")
        channels = list(TABLE5[num_layers])
        self.rnn = recurrent_stack(cell, in_channels, channels, num_layers, 3, backend=backend, td_rate=td_rate)
        self.out_channels = TABLE5[num_layers][-1]

    def forward(self, x: torch.Tensor, state: Optional[Sequence] = None) -> Tuple[torch.Tensor, List]:
        """Run the stack over ``x (T, B, C, G, G)``; return ``(output (T, B, 8, G, G), state)``."""
        return self.rnn(x, state)


def vertex_maps(vertices: torch.Tensor, grid_size: int) -> torch.Tensor:
    """One-hot ``(B, T, G, G)`` maps of vertex indices ``(B, T)``; end-of-polygon and padding give zeros."""
    cells = grid_size * grid_size
    valid = (vertices >= 0) & (vertices < cells)
    onehot = F.one_hot(torch.where(valid, vertices, 0), cells) * valid.unsqueeze(-1)
    return onehot.view(*vertices.shape, grid_size, grid_size).float()


class PolygonRNN(nn.Module):
    """Polygon-RNN's vertex decoder on given image features, with a Table-5 recurrent core.

    Args:
        num_layers: depth of the core, one of 2, 5, 10, 15.
        cell, backend, td_rate: as in :func:`recurrent_stack`.
        feature_channels: channels of the image features (128 in Polygon-RNN: 128 + 3 = 131 inputs).
        grid_size: ``G``, the side of the output grid (28 in Polygon-RNN).

    Vertices are indices ``row * G + col`` in ``[0, G*G)``; ``G*G`` (:attr:`eos`) ends the polygon and
    :data:`IGNORE_INDEX` pads after it. ``forward(features (B, F, G, G), vertices (B, T))`` is teacher
    forced: the step predicting vertex ``t >= 1`` reads vertices ``t-1``, ``t-2`` (zeros when ``t = 1``)
    and ``0``, and returns ``(first_logits (B, G*G), logits (B, T-1, G*G+1))``.
    """

    def __init__(
        self,
        num_layers: int = 2,
        cell: str = "cbm",
        backend: str = "auto",
        td_rate: float = 0.0,
        feature_channels: int = 128,
        grid_size: int = 28,
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.feature_channels = feature_channels
        self.core = PolygonRNNCore(num_layers, cell, feature_channels + VERTEX_CHANNELS, backend, td_rate)
        self.first_vertex = nn.Conv2d(feature_channels, 1, 3, padding=1)
        self.head = nn.Linear(self.core.out_channels * grid_size * grid_size, grid_size * grid_size + 1)

    @property
    def eos(self) -> int:
        """The end-of-polygon class, ``G * G``."""
        return self.grid_size * self.grid_size

    def _check(self, features: torch.Tensor) -> None:
        G, Fc = self.grid_size, self.feature_channels
        if features.dim() != 4 or tuple(features.shape[1:]) != (Fc, G, G):
            raise ValueError(f"features must have shape (B, {Fc}, {G}, {G}), got {tuple(features.shape)}")

    def _step_inputs(
        self, features: torch.Tensor, prev: torch.Tensor, prev2: torch.Tensor, first: torch.Tensor
    ) -> torch.Tensor:
        """``(T, B, F + 3, G, G)`` core inputs from features and vertex indices ``(B, T)`` / first ``(B, 1)``."""
        T = prev.shape[1]
        maps = torch.stack(
            [vertex_maps(prev, self.grid_size), vertex_maps(prev2, self.grid_size),
             vertex_maps(first.expand(-1, T), self.grid_size)], dim=2,
        )  # (B, T, 3, G, G)
        feats = features.unsqueeze(1).expand(-1, T, -1, -1, -1)
        return torch.cat([feats, maps], dim=2).transpose(0, 1)

    def _logits(self, out: torch.Tensor) -> torch.Tensor:
        """``(T, B, 8, G, G)`` core output -> ``(B, T, G*G+1)`` vertex logits."""
        return self.head(out.flatten(2)).transpose(0, 1)

    def forward(self, features: torch.Tensor, vertices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits; see the class docstring."""
        self._check(features)
        if vertices.dim() != 2 or vertices.shape[0] != features.shape[0] or vertices.shape[1] < 2:
            raise ValueError(f"vertices must have shape (B={features.shape[0]}, T>=2), got {tuple(vertices.shape)}")
        first_logits = self.first_vertex(features).flatten(1)
        prev = vertices[:, :-1]
        prev2 = torch.cat([torch.full_like(prev[:, :1], IGNORE_INDEX), prev[:, :-1]], dim=1)
        out, _ = self.core(self._step_inputs(features, prev, prev2, vertices[:, :1]))
        return first_logits, self._logits(out)

    def loss(self, features: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the first vertex plus that of every later vertex or end-of-polygon (padding ignored)."""
        first_logits, logits = self(features, vertices)
        return F.cross_entropy(first_logits, vertices[:, 0]) + F.cross_entropy(
            logits.flatten(0, 1), vertices[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )

    @torch.no_grad()
    def predict(self, features: torch.Tensor, max_vertices: int) -> torch.Tensor:
        """Greedy decoding: ``(B, max_vertices)`` vertex indices, :attr:`eos` from end-of-polygon on."""
        self._check(features)
        first = self.first_vertex(features).flatten(1).argmax(dim=1, keepdim=True)
        vertices = [first]
        prev2 = torch.full_like(first, IGNORE_INDEX)
        state = None
        for _ in range(max_vertices - 1):
            out, state = self.core(self._step_inputs(features, vertices[-1], prev2, first), state)
            prev2 = vertices[-1]
            nxt = self._logits(out)[:, 0].argmax(dim=1, keepdim=True)
            vertices.append(torch.where(prev2 == self.eos, prev2, nxt))
        return torch.cat(vertices, dim=1)
