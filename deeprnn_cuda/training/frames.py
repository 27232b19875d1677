"""``deeprnn train --task frames --data-dir ROOT``: a frame predictor trained on the user's own sequences.

Sequences come from ``ROOT/train`` and ``ROOT/test`` (or ``ROOT`` split by name, see
:func:`~deeprnn_cuda.data.frame_sequences.split_sequences`): arrays, frame folders or video files, cut into
windows of ``observe + predict`` frames ``stride`` apart and resized to ``image_size`` if given. Everything
else is the Moving-MNIST run's (:mod:`.moving_mnist_task`): the :class:`PatchRecurrentPredictor`, the loss
(cross entropy plus ``ssim_weight * (1 - SSIM)``), teacher forcing for the first ``teacher_forcing`` fraction
of the run, the wall-clock budget, OpenSTL's metrics per horizon next to the copy-last and all-black
baselines, the pictures, the curves, the checkpoint that ``resume`` continues and the summary. Unlike there,
training windows are read by a ``DataLoader`` (``workers`` processes decode while the model trains), so the
batches are drawn per step from a generator seeded by ``(seed, step)``: a resumed run trains on the batches
an uninterrupted one would have, whatever the workers, and ends with its weights.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..data.frame_sequences import FrameWindows, check_consistent, split_sequences
from ..metrics import OPENSTL_SSIM
from ..models.patch_predictor import PatchRecurrentPredictor
from .checkpoint import read_resume_checkpoint
from .moving_mnist_task import CHECKPOINT, TrainingState, evaluate_and_report, train_predictor

FRAMES_TASK = "frames"
SHOWN = 4
"""Test windows drawn in ``predictions.png`` and kept in ``predictions.npy``."""

RESUMABLE = ("budget_s", "max_steps", "workers", "test_size")
"""Config fields a resumed run may change (to train longer, or evaluate differently); every other must match."""


class FramesDataError(ValueError):
    """The data cannot be trained on; the message names the file or folder."""


@dataclass
class FramesConfig:
    """One run. ``channels``, ``height`` and ``width`` are filled in from the data (after resizing)."""

    data_dir: str = ""
    task: str = FRAMES_TASK
    cell: str = "cbm"
    layers: int = 15
    hidden: int = 16
    patch: int = 4
    kernel_size: int = 3
    shortcut_every: int = 2
    observe: int = 10
    predict: int = 10
    stride: int = 1
    image_size: Optional[int] = None
    batch_size: int = 8
    lr: float = 2e-3
    budget_s: float = 600.0
    max_steps: int = 0
    teacher_forcing: float = 0.4
    ssim_weight: float = 3.0
    test_size: int = 1000
    workers: int = 2
    seed: int = 0
    backend: str = "auto"
    channels: int = 0
    height: int = 0
    width: int = 0


def build_model(config: Dict) -> PatchRecurrentPredictor:
    """The predictor a run's ``config`` (a frames or Moving-MNIST config as a dict) describes, untrained."""
    return PatchRecurrentPredictor(config.get("channels") or 1, config["hidden"], config["layers"], config["cell"],
                                   config["patch"], config["kernel_size"], config["shortcut_every"], config["backend"])


class _StepBatches(torch.utils.data.Sampler):
    """Window indices of steps ``start, start + 1, ...``: ``batch_size`` drawn with replacement per step by a
    generator seeded with ``(seed, step)``; endless (the loop stops on its budget)."""

    def __init__(self, count: int, batch_size: int, seed: int, start: int) -> None:
        self.count, self.batch_size, self.seed, self.start = count, batch_size, seed, start

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.count, (self.batch_size,), generator=g).tolist()
            step += 1


def _data(cfg: FramesConfig) -> Tuple[FramesConfig, FrameWindows, FrameWindows]:
    """The checked config (data shape filled in) and the train and test windows; a :class:`FramesDataError`
    names what is wrong before anything is written."""
    window = cfg.observe + cfg.predict
    try:
        train_seqs, test_seqs = split_sequences(Path(cfg.data_dir))
        C, H, W = check_consistent(train_seqs + test_seqs, cfg.image_size, window)
    except (ImportError, ValueError) as e:  # ImportError: a video file without PyAV
        raise FramesDataError(str(e)) from None
    if H % cfg.patch or W % cfg.patch:
        raise FramesDataError(f"frames of {train_seqs[0].name} are {H}x{W}, not divisible by the patch size "
                              f"{cfg.patch}; give --image-size (a multiple of {cfg.patch})")
    if min(H, W) < OPENSTL_SSIM["window_size"]:
        raise FramesDataError(f"frames of {train_seqs[0].name} are {H}x{W}, smaller than SSIM's "
                              f"{OPENSTL_SSIM['window_size']}x{OPENSTL_SSIM['window_size']} window")
    cfg = replace(cfg, channels=C, height=H, width=W)
    return cfg, FrameWindows(train_seqs, window, cfg.stride, cfg.image_size), FrameWindows(test_seqs, window, cfg.stride, cfg.image_size)


def _architecture(cfg: FramesConfig) -> Dict[str, object]:
    """What a resumed run must share with its checkpoint: every option but :data:`RESUMABLE`."""
    return {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}


def evaluated_windows(test: FrameWindows, limit: int) -> List[int]:
    """The test windows evaluated: all, or ``limit`` of them evenly spread (the first and last included)."""
    if len(test) <= limit:
        return list(range(len(test)))
    return sorted({round(i * (len(test) - 1) / max(1, limit - 1)) for i in range(limit)})


def _load(data: torch.utils.data.Dataset, workers: int) -> torch.Tensor:
    """Every item of ``data`` in one tensor, read by ``workers`` processes."""
    loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=workers)
    return torch.cat(list(loader))


def run_frames(cfg: FramesConfig, out_dir: Path, resume: bool = False, progress: bool = False, log=None) -> Dict:
    """Train ``cfg``'s predictor on its data within its budget (resuming from ``out_dir/checkpoint.pt`` with
    ``resume``), evaluate, and write the run's files in ``out_dir``.

    Files: ``metrics.jsonl`` (training loss every 10 steps, then one test record per model and baseline),
    ``curves.png``, ``results.md``, ``predictions.png`` and ``predictions.npy`` (the first test windows),
    ``checkpoint.pt``, ``model.pt`` (weights and config, what ``deeprnn predict`` and ``export`` read) and
    ``summary.json``. Returns the summary. Raises :class:`FramesDataError` for bad data and ``ConfigError``
    for a bad resume, both before writing anything.
    """
    log = log or sys.stderr
    cfg, train, test = _data(cfg)
    out_dir = Path(out_dir)
    ckpt = read_resume_checkpoint(out_dir / CHECKPOINT, _architecture(cfg)) if resume else None
    torch.manual_seed(cfg.seed)
    model = build_model(asdict(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = TrainingState.resume(ckpt, model, optimizer)
    name = f"{cfg.layers}-layer {cfg.cell}"

    def teacher_forced(trained: float, step: int) -> bool:
        """Until ``teacher_forcing`` of the budget or, with a step cap, of the steps is spent, whichever first."""
        done = max(trained / cfg.budget_s, step / cfg.max_steps if cfg.max_steps > 0 else 0.0)
        return done < cfg.teacher_forcing

    loader = torch.utils.data.DataLoader(train, batch_sampler=_StepBatches(len(train), cfg.batch_size, cfg.seed,
                                                                           state.step), num_workers=cfg.workers)
    batches = iter(loader)
    train_predictor(cfg, model, optimizer, batches, state, out_dir, name=name, teacher_forced=teacher_forced,
                    curves_title=f"{cfg.task} on {cfg.data_dir}: {name}", architecture=_architecture(cfg),
                    progress=progress)
    del batches  # stops the workers

    picks = evaluated_windows(test, cfg.test_size)
    print(f"trained {state.step} steps in {state.trained:.0f} s; evaluating on {len(picks)} of {len(test)} test "
          f"windows", file=log)
    videos = _load(torch.utils.data.Subset(test, picks), cfg.workers)
    details = {"channels": cfg.channels, "frame_size": [cfg.height, cfg.width], "train_windows": len(train),
               "test_windows": len(picks)}
    return evaluate_and_report(cfg, model, videos, state, out_dir, name=name, batch_size=16, shown=SHOWN,
                               noun="windows", details=details, shown_sources=[test.describe(i) for i in picks[:SHOWN]],
                               keep_predictions=True, progress=progress, log=log)
