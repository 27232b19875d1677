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

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..data.frame_sequences import FrameWindows, check_consistent, split_sequences
from ..metrics import OPENSTL_SSIM
from ..models.patch_predictor import PatchRecurrentPredictor
from .checkpoint import read_resume_checkpoint, remove_stale_temporaries, save_atomic, write_text_atomic
from .metrics import plot_series, write_metrics
from .progress import budget_bar, step_bar
from .moving_mnist_task import (
    CHECKPOINT,
    CURVES,
    all_black,
    copy_last_frame,
    evaluate_frames,
    prediction_loss,
    results_table,
    save_predictions_png,
)

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
    ckpt_path = out_dir / CHECKPOINT
    ckpt = read_resume_checkpoint(ckpt_path, _architecture(cfg)) if resume else None
    torch.manual_seed(cfg.seed)
    model = build_model(asdict(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    records: List[Dict] = []
    trained, step, window = 0.0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        trained, step, records = ckpt["trained_seconds"], ckpt["step"], ckpt["records"]
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ckpt_path)
    name = f"{cfg.layers}-layer {cfg.cell}"

    def save() -> None:
        write_metrics(out_dir / "metrics.jsonl", records)
        plot_series({"train loss": [r["train_loss"] for r in records]}, [r["step"] for r in records],
                    out_dir / CURVES, "step", "loss", f"{cfg.task} on {cfg.data_dir}: {name}")
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "trained_seconds": trained, "records": records, "architecture": _architecture(cfg),
                     "config": asdict(cfg)}, ckpt_path)

    loader = torch.utils.data.DataLoader(train, batch_sampler=_StepBatches(len(train), cfg.batch_size, cfg.seed, step),
                                         num_workers=cfg.workers)
    batches = iter(loader)
    # a step cap gives a bar in steps; the budget alone, one in seconds trained
    bar = (step_bar(desc=name, show=progress, total=cfg.max_steps) if cfg.max_steps > 0
           else budget_bar(cfg.budget_s, desc=name, show=progress))
    bar.update(step if cfg.max_steps > 0 else min(trained, cfg.budget_s))
    model.train()
    while trained < cfg.budget_s and (cfg.max_steps <= 0 or step < cfg.max_steps):
        batch = next(batches)
        t0 = time.perf_counter()
        done = max(trained / cfg.budget_s, step / cfg.max_steps if cfg.max_steps > 0 else 0.0)
        teacher_forced = done < cfg.teacher_forcing
        loss = prediction_loss(model.rollout(batch, cfg.observe, teacher_forced=teacher_forced), batch, cfg.observe,
                               cfg.ssim_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - t0
        trained += seconds
        step += 1
        window.append(loss.item())
        bar.update(1 if cfg.max_steps > 0 else min(seconds, cfg.budget_s - bar.n))
        bar.set_postfix_str(f"step {step}, {'teacher-forced' if teacher_forced else 'closed-loop'}, "
                            f"loss {window[-1]:.4f}")
        if step % 10 == 0 or trained >= cfg.budget_s or step == cfg.max_steps:  # and the last step's
            records.append({"step": step, "train_seconds": round(trained, 2), "train_loss": sum(window) / len(window),
                            "teacher_forced": teacher_forced})
            window = []
            save()
    bar.close()
    del batches  # stops the workers

    picks = evaluated_windows(test, cfg.test_size)
    print(f"trained {step} steps in {trained:.0f} s; evaluating on {len(picks)} of {len(test)} test windows", file=log)
    videos = _load(torch.utils.data.Subset(test, picks), cfg.workers)
    model.eval()
    start = time.perf_counter()
    results = {name: evaluate_frames(model, videos, cfg.observe, 16, progress, f"evaluating {name}")}
    eval_seconds = time.perf_counter() - start
    results["copy last frame"] = evaluate_frames(copy_last_frame, videos, cfg.observe, 16)
    results["all black"] = evaluate_frames(all_black, videos, cfg.observe, 16)
    test_records = [{"test": m, **v, **{f"{k}_avg": sum(x) / len(x) for k, x in v.items()}} for m, v in results.items()]
    write_metrics(out_dir / "metrics.jsonl", records + test_records)
    table = results_table(results)
    write_text_atomic(out_dir / "results.md", table)
    shown = videos[:SHOWN]
    with torch.no_grad():
        predicted = model(shown[:, :cfg.observe], cfg.predict)
    title = (f"{cfg.task}: {name} after {step} steps; observe {cfg.observe} frames, predict {cfg.predict} "
             f"(the first {len(shown)} test windows)")
    save_predictions_png(shown, predicted, cfg.observe, out_dir / "predictions.png", title)
    np.save(out_dir / "predictions.npy", predicted.numpy())
    save_atomic({"model": model.state_dict(), "config": asdict(cfg)}, out_dir / "model.pt")
    summary = {
        "task": cfg.task, "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "steps": step,
        "train_seconds": round(trained, 1), "eval_seconds": round(eval_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()), "channels": cfg.channels,
        "frame_size": [cfg.height, cfg.width], "train_windows": len(train), "test_windows": len(picks),
        **{f"{k}_avg": sum(v) / len(v) for k, v in results[name].items()},
        "baselines": {b: {f"{k}_avg": sum(v) / len(v) for k, v in results[b].items()} for b in ("copy last frame", "all black")},
        "shown": [test.describe(i) for i in picks[:SHOWN]],
        "config": asdict(cfg), "out": str(out_dir), "curves": str(out_dir / CURVES),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(table, end="", file=log)
    return summary
