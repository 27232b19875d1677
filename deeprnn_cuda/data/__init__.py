"""Sequence data: synthetic tasks made in code (deterministic under a seed, no downloads), video datasets read
from frame folders or video files, and Moving MNIST / Fashion-MNIST from real IDX images."""
from __future__ import annotations

from typing import Dict, Tuple

from .cat_dog import cat_dog, cat_template, distance_labels
from .dataset import IGNORE_INDEX, SequenceDataset
from .clip_videos import ClipVideos
from .frame_folder import FrameFolderVideos
from .idx import MissingDataError, load_images, read_idx
from .moving_digits import digit_glyph, moving_digits
from .moving_mnist import MovingMNIST
from .moving_shapes import moving_shapes
from .video_files import VideoFileVideos

TASKS = ("moving-shapes", "cat-dog")

_TEST_SEED_OFFSET = 1_000_003


def make_task(task: str, train_size: int, test_size: int, seed: int, **options) -> Tuple[SequenceDataset, SequenceDataset]:
    """Train and test sets of ``task`` (one of :data:`TASKS`), drawn from disjoint seeds.

    ``options`` go to the generator (``frames``/``size`` for moving-shapes, ``length``/``size`` for cat-dog).
    """
    makers: Dict[str, object] = {"moving-shapes": moving_shapes, "cat-dog": cat_dog}
    if task not in makers:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    make = makers[task]
    return make(train_size, seed=seed, **options), make(test_size, seed=seed + _TEST_SEED_OFFSET, **options)


__all__ = [
    "ClipVideos",
    "FrameFolderVideos",
    "IGNORE_INDEX",
    "MissingDataError",
    "MovingMNIST",
    "SequenceDataset",
    "TASKS",
    "cat_dog",
    "cat_template",
    "digit_glyph",
    "distance_labels",
    "load_images",
    "make_task",
    "moving_digits",
    "moving_shapes",
    "read_idx",
    "VideoFileVideos",
]
