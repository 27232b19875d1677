"""The synthetic tasks: shapes, labels, determinism, and that they show what they claim."""
import pytest
import torch

from deeprnn_cuda.data import IGNORE_INDEX, cat_dog, cat_template, distance_labels, make_task, moving_shapes
from deeprnn_cuda.data.moving_shapes import DIRECTIONS, NUM_CLASSES


def test_moving_shapes_layout_and_labels():
    d = moving_shapes(30, frames=6, size=16, seed=3)
    assert d.frames.shape == (30, 6, 1, 16, 16) and d.frames.dtype == torch.float32
    assert d.num_classes == NUM_CLASSES == 12
    assert (d.targets[:, :-1] == IGNORE_INDEX).all()
    last = d.targets[:, -1]
    assert set(last.tolist()) == set(range(12))  # 30 samples cover all 12 classes


def test_moving_shapes_is_deterministic_under_seed():
    a, b, c = (moving_shapes(8, frames=4, size=12, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.frames, b.frames) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.frames, c.frames)


def test_moving_shapes_move_in_their_direction():
    d = moving_shapes(24, frames=5, size=16, noise=0.0, seed=1)
    coords = torch.arange(16, dtype=torch.float32)
    for frames, label in zip(d.frames, d.targets[:, -1]):
        img = frames[:, 0]
        mass = img.sum((1, 2))
        cx = (img.sum(1) * coords).sum(1) / mass
        cy = (img.sum(2) * coords).sum(1) / mass
        dx, dy = float(cx[-1] - cx[0]), float(cy[-1] - cy[0])
        direction = DIRECTIONS[int(label) % 4]
        moved = {"right": dx, "left": -dx, "down": dy, "up": -dy}[direction]
        assert moved > 1.0, (direction, dx, dy)


def test_cat_dog_has_one_cat_and_distance_labels():
    d = cat_dog(5, length=64, size=6, noise=0.0, seed=2)
    assert d.frames.shape == (5, 64, 1, 6, 6) and d.num_classes == 65
    template = cat_template(6)
    for frames, targets in zip(d.frames, d.targets):
        is_cat = (frames == template).flatten(1).all(1)
        assert int(is_cat.sum()) == 1
        cat = int(is_cat.nonzero())
        labels = targets - 1
        assert (labels[:cat] == -1).all()
        assert torch.equal(labels[cat:], torch.arange(64 - cat))


def test_cat_dog_is_deterministic_and_validates():
    assert torch.equal(cat_dog(2, seed=1).frames, cat_dog(2, seed=1).frames)
    assert not torch.equal(cat_dog(2, seed=1).frames, cat_dog(2, seed=2).frames)
    with pytest.raises(ValueError, match="length"):
        cat_dog(2, length=32)
    assert distance_labels(torch.tensor([2]), 5).tolist() == [[-1, -1, 0, 1, 2]]


def test_make_task_splits_and_rejects_unknown_tasks():
    train, test = make_task("moving-shapes", 4, 3, seed=0, frames=3, size=8)
    assert len(train) == 4 and len(test) == 3
    assert not torch.equal(train.frames[:3], test.frames)
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("mnist", 1, 1, seed=0)
