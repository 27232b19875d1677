"""Moving MNIST from real images: the standard protocol of Srivastava et al. (2015), as OpenSTL uses it.

Two 28x28 images bounce inside a 64x64 frame, 20 frames (observe 10, predict 10). Each object starts at a
uniform position, moves in a uniform direction at 0.1 of the free range per frame (3.6 pixels in 64x64)
and reflects off the edges; positions are truncated to whole pixels and overlapping objects combine by
maximum. Pixel values in ``[0, 1]``. With Fashion-MNIST's images (Debian's ``dataset-fashion-mnist``, the
default) this is OpenSTL's MFMNIST; with MNIST's it is Moving MNIST proper.

Training sequences are drawn on the fly from the training images (:meth:`MovingMNIST.sample`); the test
set is a fixed seeded draw from the test images (:meth:`MovingMNIST.fixed`).
"""
from __future__ import annotations

from typing import Optional, Union
from pathlib import Path

import torch

from .idx import load_images
from .moving_digits import _bounce

STEP = 0.1
"""Distance per frame as a fraction of the free range ``size - object size`` (the protocol's step length)."""


class MovingMNIST:
    """Sequences of ``num_objects`` images from ``images (N, h, w)`` bouncing in ``size x size`` frames.

    Args:
        images: ``(N, h, w)`` uint8 (0-255) or float (0-1) images to draw objects from.
        frames: frames per sequence (protocol: 20).
        size: frame height and width (protocol: 64); must exceed the image size.
        num_objects: objects per sequence (protocol: 2).
    """

    def __init__(self, images: torch.Tensor, frames: int = 20, size: int = 64, num_objects: int = 2) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 3 or len(images) == 0:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a non-empty tensor of shape (N, h, w), got {got}")
        for name, value in (("frames", frames), ("num_objects", num_objects)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        h, w = images.shape[1:]
        if isinstance(size, bool) or not isinstance(size, int) or size <= max(h, w):
            raise ValueError(f"size must be an int larger than the {h}x{w} images, got {size!r}")
        self.images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        self.frames, self.size, self.num_objects = frames, size, num_objects

    @classmethod
    def from_idx(cls, split: str, data_dir: Optional[Union[str, Path]] = None, **options) -> "MovingMNIST":
        """Objects from the ``split`` images of ``data_dir`` (default: Debian's Fashion-MNIST), see :func:`load_images`."""
        return cls(load_images(split, data_dir), **options)

    def sample(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """``(num_samples, frames, 1, size, size)`` float32 sequences drawn with ``generator``."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        h, w = self.images.shape[1:]
        limits = (self.size - h, self.size - w)
        out = torch.zeros(num_samples, self.frames, 1, self.size, self.size)
        for n in range(num_samples):
            for _ in range(self.num_objects):
                image = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
                start = torch.rand(2, generator=generator, dtype=torch.float64)
                angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * torch.pi
                direction = torch.tensor([torch.sin(torch.tensor(angle)), torch.cos(torch.tensor(angle))])
                ys, xs = (
                    _bounce(float(start[i]) * limits[i], STEP * limits[i] * float(direction[i]), self.frames, limits[i])
                    .floor().long().tolist()
                    for i in (0, 1)
                )
                for t, (y, x) in enumerate(zip(ys, xs)):
                    patch = out[n, t, 0, y:y + h, x:x + w]
                    torch.maximum(patch, image, out=patch)
        return out

    def fixed(self, num_samples: int, seed: int) -> torch.Tensor:
        """A reproducible set of ``num_samples`` sequences (the test set): :meth:`sample` under ``seed``."""
        return self.sample(num_samples, torch.Generator().manual_seed(seed))
