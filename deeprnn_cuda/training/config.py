"""Everything a training run is made of, validated with errors that name the command-line option."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

from .._checks import BACKENDS
from ..data import TASKS
from ..models.stack import CELLS
from .overlap import COHERENCE_SPACES, check_clip_lengths
from .schedule import TDSchedule

GENERAL_DEFAULTS = {"hidden": 8, "train_size": 1200, "test_size": 300, "epochs": 6, "batch_size": 32, "lr": 3e-3}
"""Model width, data and optimisation defaults of every task that does not set its own."""

TASK_DEFAULTS = {
    # the demo's settings (README: 0.97 test accuracy with 15 layers in a few CPU minutes); the former 16 frames
    # of 32x32 with 1200 sequences and 6 epochs overfit a 15-layer stack (0.96 train, 0.64 test): its linear
    # head on 8x32x32 features had 4x the weights for fewer training sequences
    "moving-shapes": {"frames": 8, "image_size": 16, "train_size": 1600, "test_size": 400, "epochs": 10},
    # the settings of the README's cat-dog result (93-98% exact-distance accuracy on three seeds, clips of 4-9 frames)
    "cat-dog": {"frames": 64, "image_size": 4, "hidden": 64, "train_size": 1024, "test_size": 64, "epochs": 150,
                "batch_size": 16, "lr": 2e-3},
}
"""Per task: sequence length, frame size and any :data:`GENERAL_DEFAULTS` it overrides."""


LR_SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


def learning_rate(base: float, schedule: str, progress: float) -> float:
    """The learning rate at ``progress`` in ``[0, 1)`` of training: constant, or cosine decay to zero."""
    if schedule == "constant":
        return base
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


class ConfigError(ValueError):
    """A bad option: ``option`` is its command-line name (e.g. ``--clip-max``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass
class TrainConfig:
    """One training run. Field ``foo_bar`` is the command-line option ``--foo-bar``.

    Fields that default to None take the task's default (:data:`TASK_DEFAULTS`, then
    :data:`GENERAL_DEFAULTS`), except ``clip_max``: None trains on whole sequences, otherwise on
    overlapping clips of ``clip_min..clip_max`` frames.
    """

    task: str = "moving-shapes"
    cell: str = "cbm"
    layers: int = 1
    seed: int = 0
    hidden: Optional[int] = None
    kernel_size: int = 3
    shortcut_every: int = 2
    frames: Optional[int] = None
    image_size: Optional[int] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    td_schedule: str = "1.0,0.8@2,0.5@4"
    clip_min: int = 2
    clip_max: Optional[int] = None
    overlap: float = 0.25
    coherence_lambda: float = 0.8
    coherence_on: str = "probabilities"
    handoff: bool = True
    backend: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        defaults = {**GENERAL_DEFAULTS, **TASK_DEFAULTS.get(self.task, {})}
        for name in ("frames", "image_size", *GENERAL_DEFAULTS):
            if getattr(self, name) is None:
                setattr(self, name, defaults.get(name))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first bad option."""
        if self.task not in TASKS:
            raise ConfigError("--task", f"must be one of {list(TASKS)}, got {self.task!r}")
        if self.cell not in CELLS:
            raise ConfigError("--cell", f"must be one of {list(CELLS)}, got {self.cell!r}")
        if self.backend not in BACKENDS:
            raise ConfigError("--backend", f"must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise ConfigError("--device", f"must be one of {list(DEVICES)}, got {self.device!r}")
        for option, value, low in (
            ("--layers", self.layers, 1),
            ("--hidden", self.hidden, 1),
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--train-size", self.train_size, 1),
            ("--test-size", self.test_size, 1),
            ("--frames", self.frames, 2),
            ("--image-size", self.image_size, 4),
        ):
            if value < low:
                raise ConfigError(option, f"must be >= {low}, got {value}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError("--kernel-size", f"must be an odd number >= 1, got {self.kernel_size}")
        if self.shortcut_every < 0:
            raise ConfigError("--shortcut-every", f"must be >= 0 (0: no shortcuts), got {self.shortcut_every}")
        if self.lr <= 0:
            raise ConfigError("--lr", f"must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError("--lr-schedule", f"must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.task == "cat-dog" and self.frames < 64:
            raise ConfigError("--frames", f"must be >= 64 for cat-dog, got {self.frames}")
        try:
            TDSchedule.parse(self.td_schedule)
        except ValueError as e:
            raise ConfigError("--td-schedule", str(e)) from None
        if self.clip_max is not None:
            try:
                check_clip_lengths(self.frames, self.clip_min, self.clip_max)
            except ValueError as e:
                option = "--clip-min" if str(e).startswith("n_min must be >= 2") else "--clip-max"
                msg = str(e).replace("n_min", "--clip-min").replace("n_max", "--clip-max")
                raise ConfigError(option, msg + f" (--frames {self.frames})") from None
        if self.clip_max is not None and self.cell == "convlstm":
            raise ConfigError(
                "--clip-max", "overlap training needs every step's (h, c) state, which ConvLSTM does not return; use --cell cbm"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("--overlap", f"must be in [0, 1), got {self.overlap}")
        if self.coherence_lambda < 0:
            raise ConfigError("--coherence-lambda", f"must be >= 0, got {self.coherence_lambda}")
        if self.coherence_on not in COHERENCE_SPACES:
            raise ConfigError("--coherence-on", f"must be one of {list(COHERENCE_SPACES)}, got {self.coherence_on!r}")

    def architecture(self) -> Dict[str, object]:
        """The options a checkpoint's weights depend on (a resumed run must match them)."""
        keys = ("task", "cell", "layers", "hidden", "kernel_size", "shortcut_every", "frames", "image_size")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> Dict[str, object]:
        """All fields, JSON-ready."""
        return asdict(self)
