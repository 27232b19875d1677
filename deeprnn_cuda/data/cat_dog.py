"""The paper's "Cat & Dog" toy (Fig. 5): how many frames ago was the cat?

A long sequence of small images holds exactly one "cat" (a fixed template plus noise); every other frame
is a "dog" (a fresh random pattern). The label of a frame is its distance in frames since the cat
(0 on the cat itself) and -1 before it. As class indices a model predicts ``label + 1``.
"""
from __future__ import annotations

import torch

from .dataset import SequenceDataset

_TEMPLATE_SEED = 20190616  # the cat looks the same in every data set, whatever the seed


def cat_template(size: int) -> torch.Tensor:
    """The cat's appearance: a fixed binary ``(1, size, size)`` pattern."""
    g = torch.Generator().manual_seed(_TEMPLATE_SEED + size)
    return (torch.rand(1, size, size, generator=g) < 0.5).float()


def distance_labels(cat_positions: torch.Tensor, length: int) -> torch.Tensor:
    """``(N, length)`` int64: frame index minus the cat's index, -1 before the cat."""
    frames = torch.arange(length)[None, :]
    dist = frames - cat_positions[:, None]
    return torch.where(dist >= 0, dist, torch.full_like(dist, -1))


def cat_dog(
    num_sequences: int,
    length: int = 64,
    size: int = 8,
    max_cat_position: int = 12,
    noise: float = 0.1,
    seed: int = 0,
) -> SequenceDataset:
    """Make ``num_sequences`` sequences of ``length`` single-channel ``size x size`` frames.

    The cat appears at a uniformly random frame in ``[0, max_cat_position]``, so every distance from 0 to
    ``length - 1 - max_cat_position`` is labelled in every sequence. ``num_classes = length + 1``
    (labels -1 .. length-1). Deterministic under ``seed``.
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if length < 64:
        raise ValueError(f"length must be >= 64 frames (the task is about long range memory), got {length}")
    if size < 4:
        raise ValueError(f"size must be >= 4 pixels, got {size}")
    if not 0 <= max_cat_position < length:
        raise ValueError(f"max_cat_position must be in [0, length={length}), got {max_cat_position}")
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(num_sequences, length, 1, size, size, generator=g) < 0.5).float()
    cats = torch.randint(0, max_cat_position + 1, (num_sequences,), generator=g)
    frames[torch.arange(num_sequences), cats] = cat_template(size)
    frames += noise * torch.randn(frames.shape, generator=g)
    labels = distance_labels(cats, length)
    return SequenceDataset(frames, labels + 1, num_classes=length + 1)
