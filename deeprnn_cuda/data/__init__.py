"""Synthetic sequence tasks made in code (deterministic under a seed, no downloads)."""
from __future__ import annotations

from typing import Dict, Tuple

from .cat_dog import cat_dog, cat_template, distance_labels
from .dataset import IGNORE_INDEX, SequenceDataset
from .frame_folder import FrameFolderVideos
from .moving_digits import digit_glyph, moving_digits
from .moving_shapes import moving_shapes

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
    "FrameFolderVideos",
    "IGNORE_INDEX",
    "SequenceDataset",
    "TASKS",
    "cat_dog",
    "cat_template",
    "digit_glyph",
    "distance_labels",
    "make_task",
    "moving_digits",
    "moving_shapes",
]
