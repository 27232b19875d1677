"""The in-memory container every synthetic task returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Target value of a frame that carries no label (``torch.nn.functional.cross_entropy``'s default)."""


@dataclass
class SequenceDataset:
    """Frames and per-frame class targets of a batch of equally long sequences.

    Attributes:
        frames: ``(N, T, C, H, W)`` float32 images.
        targets: ``(N, T)`` int64 class indices in ``[0, num_classes)``, or :data:`IGNORE_INDEX` on frames
            that carry no label (e.g. every frame but the last for clip-level classification).
        num_classes: number of classes a model must output per frame.
    """

    frames: torch.Tensor
    targets: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.frames.dim() != 5:
            raise ValueError(f"frames must have shape (N, T, C, H, W), got {tuple(self.frames.shape)}")
        if tuple(self.targets.shape) != tuple(self.frames.shape[:2]):
            raise ValueError(
                f"targets must have shape (N, T) = {tuple(self.frames.shape[:2])}, got {tuple(self.targets.shape)}"
            )

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def length(self) -> int:
        """Number of frames per sequence."""
        return self.frames.shape[1]

    @property
    def channels(self) -> int:
        """Channels per frame."""
        return self.frames.shape[2]

    @property
    def image_size(self) -> int:
        """Height (= width) of a frame."""
        return self.frames.shape[3]
