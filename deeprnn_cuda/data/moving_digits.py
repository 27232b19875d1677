"""Moving digits, a Moving-MNIST-like video-prediction set drawn in code (no downloads).

Digits from a built-in 5x7 bitmap font, scaled up, move with constant velocity and bounce off the frame
edges; overlapping digits combine by maximum. Deterministic under ``seed`` (its own generator).
"""
from __future__ import annotations

import torch

FONT_5X7 = (
    ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),  # 0
    ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),  # 1
    ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),  # 2
    ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),  # 3
    ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),  # 4
    ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),  # 5
    ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),  # 6
    ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),  # 7
    ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),  # 8
    ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),  # 9
)
"""Rows of every digit glyph, ``1`` = ink."""


def digit_glyph(digit: int, scale: int = 1) -> torch.Tensor:
    """The ``(7 scale, 5 scale)`` float image of ``digit`` (0-9), each font pixel a ``scale x scale`` block."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit!r}")
    rows = torch.tensor([[float(ch) for ch in row] for row in FONT_5X7[digit]])
    return rows.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def _bounce(start: float, velocity: float, frames: int, limit: float) -> torch.Tensor:
    """Positions in ``[0, limit]`` of a point moving at ``velocity`` that reflects off both ends."""
    pos = start + velocity * torch.arange(frames, dtype=torch.float64)
    if limit == 0:
        return torch.zeros(frames, dtype=torch.float64)
    period = pos.remainder(2 * limit)
    return torch.where(period > limit, 2 * limit - period, period)


def moving_digits(
    num_samples: int, frames: int = 30, size: int = 32, num_digits: int = 2, scale: int = 2, seed: int = 0
) -> torch.Tensor:
    """``(num_samples, frames, 1, size, size)`` float32 videos in ``[0, 1]`` of bouncing digits.

    Args:
        num_samples: number of videos.
        frames: frames per video (the paper's protocol: 10 observed + 20 predicted = 30).
        size: frame height and width.
        num_digits: digits per video.
        scale: font pixel size; a glyph is ``7 scale x 5 scale`` and must fit in the frame.
        seed: seed of the digits, starts and velocities (speeds of 1 to 3 pixels per frame).
    """
    for name, value in (("num_samples", num_samples), ("frames", frames), ("num_digits", num_digits), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 7 * scale:
        raise ValueError(f"size must be an int >= 7 * scale = {7 * scale} (one glyph), got {size!r}")
    g = torch.Generator().manual_seed(seed)
    gh, gw = 7 * scale, 5 * scale
    glyphs = [digit_glyph(d, scale) for d in range(10)]
    videos = torch.zeros(num_samples, frames, 1, size, size)
    for n in range(num_samples):
        for _ in range(num_digits):
            digit = int(torch.randint(10, (1,), generator=g))
            start = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([size - gh, size - gw])
            angle = float(torch.rand((), generator=g, dtype=torch.float64)) * 2 * torch.pi
            speed = 1.0 + 2.0 * float(torch.rand((), generator=g, dtype=torch.float64))
            ys = _bounce(float(start[0]), speed * float(torch.sin(torch.tensor(angle))), frames, size - gh)
            xs = _bounce(float(start[1]), speed * float(torch.cos(torch.tensor(angle))), frames, size - gw)
            for t in range(frames):
                y, x = int(ys[t].round()), int(xs[t].round())
                patch = videos[n, t, 0, y:y + gh, x:x + gw]
                torch.maximum(patch, glyphs[digit], out=patch)
    return videos
