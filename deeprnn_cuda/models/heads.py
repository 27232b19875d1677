"""Pieces the action models share: input checks, per-frame modules, the classifier, anticipation."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def check_clip(x: object, channels: int) -> torch.Tensor:
    """Check a batch-first clip ``x (B, T, channels, H, W)`` and return it time-first ``(T, B, C, H, W)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, T, C={channels}, H, W), got {type(x).__name__}")
    if x.dim() != 5 or x.shape[2] != channels or x.shape[1] == 0:
        raise ValueError(f"x must have shape (B, T>=1, C={channels}, H, W), got {tuple(x.shape)}")
    return x.transpose(0, 1)


def per_frame(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply an image function to every frame of ``x (T, B, C, H, W)`` as one batch of ``T * B`` images."""
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class FrameClassifier(nn.Module):
    """Global average pool, dropout and a linear layer on every frame: ``(T, B, C, H, W) -> (B, T, K)``."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(3, 4))  # (T, B, C)
        return self.fc(self.dropout(pooled)).transpose(0, 1)


def first_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The first ``num_frames`` frames of a batch-first clip ``(B, T, ...)`` (action anticipation)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= x.shape[1]:
        raise ValueError(f"num_frames must be an int in [1, T={x.shape[1]}], got {num_frames!r}")
    return x[:, :num_frames]
