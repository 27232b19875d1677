"""Training tools: the TD schedule, Overlap Coherence Training, and the loop behind ``deeprnn train``."""
from .checkpoint import UnsafeCheckpointError, load_checkpoint, save_atomic
from .config import ConfigError, TrainConfig
from .evaluate import EvalResult, evaluate
from .loop import train
from .model import SequenceClassifier
from .overlap import (
    Clip,
    ClipOutput,
    OverlapRunner,
    check_clip_lengths,
    overlap_coherence_loss,
    overlap_training_step,
    sample_clips,
    schedule_waves,
)
from .schedule import TDSchedule

__all__ = [
    "Clip",
    "ClipOutput",
    "ConfigError",
    "EvalResult",
    "OverlapRunner",
    "SequenceClassifier",
    "TDSchedule",
    "TrainConfig",
    "UnsafeCheckpointError",
    "check_clip_lengths",
    "evaluate",
    "load_checkpoint",
    "overlap_coherence_loss",
    "overlap_training_step",
    "sample_clips",
    "save_atomic",
    "schedule_waves",
    "train",
]
