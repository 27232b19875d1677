"""The paper's toy task (section 3.1): which shape moves in which direction.

A triangle, circle or square moves in a straight line (right, left, down or up) from a random start, with
random speed, brightness and pixel noise. 12 classes: ``shape * 4 + direction``. Only the last frame of
a sequence is labelled: a recurrent model has to integrate motion over time to answer.
"""
from __future__ import annotations

import torch

from .dataset import IGNORE_INDEX, SequenceDataset

SHAPES = ("triangle", "circle", "square")
DIRECTIONS = ("right", "left", "down", "up")
NUM_CLASSES = len(SHAPES) * len(DIRECTIONS)
_STEPS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # (dx, dy) per direction


def _shape_mask(shape: int, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Membership of pixel offsets ``(dx, dy)`` from the shape centre (y grows downwards)."""
    if shape == 0:  # triangle, apex up: half width grows linearly from the apex to the base
        return (dy >= -radius) & (dy <= radius) & (dx.abs() <= (dy + radius) / 2)
    if shape == 1:  # circle
        return dx * dx + dy * dy <= radius * radius
    return (dx.abs() <= 0.8 * radius) & (dy.abs() <= 0.8 * radius)  # square, same area scale


def moving_shapes(
    num_samples: int, frames: int = 16, size: int = 32, noise: float = 0.1, seed: int = 0
) -> SequenceDataset:
    """Make ``num_samples`` sequences of ``frames`` single-channel ``size x size`` images.

    Deterministic under ``seed`` (its own ``torch.Generator``; the global RNG is untouched).
    Classes are balanced up to rounding: sample ``i`` has class ``i % 12`` before shuffling.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (motion needs two frames), got {frames}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    radius = size / 6.0
    margin = radius + 1.0
    max_travel = size - 2 * margin
    classes = torch.arange(num_samples) % NUM_CLASSES
    classes = classes[torch.randperm(num_samples, generator=g)]
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    t = torch.arange(frames, dtype=torch.float32)
    out = torch.empty(num_samples, frames, 1, size, size)
    for i in range(num_samples):
        shape, direction = divmod(int(classes[i]), len(DIRECTIONS))
        speed = float(torch.empty(()).uniform_(0.5, 1.0, generator=g)) * max_travel / (frames - 1)
        step = _STEPS[direction] * speed
        travel = step * (frames - 1)
        lo = margin - torch.clamp(travel, max=0.0)
        hi = size - 1 - margin - torch.clamp(travel, min=0.0)
        start = lo + torch.rand(2, generator=g) * (hi - lo)
        centres = start + t[:, None] * step  # (frames, 2) as (x, y)
        dx = xx[None] - centres[:, 0, None, None]
        dy = yy[None] - centres[:, 1, None, None]
        brightness = float(torch.empty(()).uniform_(0.6, 1.0, generator=g))
        out[i, :, 0] = _shape_mask(shape, dx, dy, radius).float() * brightness
    out += noise * torch.randn(out.shape, generator=g)
    targets = torch.full((num_samples, frames), IGNORE_INDEX, dtype=torch.long)
    targets[:, -1] = classes
    return SequenceDataset(out, targets, NUM_CLASSES)
