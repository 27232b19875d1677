"""The training loop behind ``deeprnn train``: data, model, TD schedule, overlap training, records."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional, TextIO

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data import SequenceDataset, make_task
from .checkpoint import read_resume_checkpoint, remove_stale_temporaries, rng_state, save_atomic, set_rng_state
from .config import ConfigError, TrainConfig, learning_rate
from .distributed import DistInfo, barrier, init_distributed, local_device, shutdown
from .evaluate import EvalResult, evaluate
from .metrics import plot_curves, plot_series, read_metrics, write_metrics
from .model import SequenceClassifier
from .overlap import Clip, overlap_training_step, sample_clips
from .progress import step_bar
from .schedule import TDSchedule

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
DISTANCE_PLOT = "accuracy_by_distance.png"
CAT_DOG_RANGE = range(10, 51)
"""Distances whose pooled exact-distance accuracy ``deeprnn train --task cat-dog`` reports."""


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    return cfg.seed * 1_000_003 + epoch


def train(
    cfg: TrainConfig, out_dir: Path, resume: bool = False, progress: bool = True, log: Optional[TextIO] = None
) -> Dict:
    """Train as ``cfg`` says, writing ``metrics.jsonl``, ``curves.png`` and ``checkpoint.pt`` in ``out_dir``.

    With ``resume`` it continues from ``out_dir/checkpoint.pt`` (model, optimizer, epoch, RNG state),
    giving the same weights as an uninterrupted run. Every check happens before anything is written;
    a bad option raises :class:`ConfigError`. Under ``torchrun`` it runs DistributedDataParallel and only
    rank 0 writes; per-epoch lines go to ``log`` (default stderr). Returns the summary that
    ``deeprnn train`` prints as JSON.
    """
    started = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    ckpt = read_resume_checkpoint(ckpt_path, cfg.architecture()) if resume else None
    try:
        device = local_device(cfg.device)
    except ValueError as e:
        raise ConfigError("--device", str(e)) from None
    dist = init_distributed(device)
    try:
        return _train(cfg, out_dir, ckpt, device, dist, progress, log or sys.stderr, started)
    finally:
        shutdown(dist)


def _train(
    cfg: TrainConfig,
    out_dir: Path,
    ckpt: Optional[Dict],
    device: torch.device,
    dist: DistInfo,
    progress: bool,
    log: TextIO,
    started: float,
) -> Dict:
    train_set, test_set = make_task(cfg.task, cfg.train_size, cfg.test_size, cfg.seed, **_task_options(cfg))
    torch.manual_seed(cfg.seed)
    net = SequenceClassifier(
        cfg.cell, cfg.layers, train_set.channels, cfg.hidden, train_set.num_classes, train_set.image_size,
        kernel_size=cfg.kernel_size, shortcut_every=cfg.shortcut_every, backend=cfg.backend,
    ).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    start_epoch = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch = ckpt["epoch"] + 1
    model = net
    if dist.enabled:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    schedule = TDSchedule.parse(cfg.td_schedule)
    records = [r for r in read_metrics(out_dir / METRICS) if r["epoch"] < start_epoch] if ckpt else []
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for written in (CHECKPOINT, METRICS):  # what a killed run may have left half written
            remove_stale_temporaries(out_dir / written)
    result: Optional[EvalResult] = None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(_epoch_seed(cfg, epoch))
        torch.manual_seed(_epoch_seed(cfg, epoch) + 7919 * dist.rank)  # Temporal Dropout coins
        td_rate = schedule.apply(net, epoch)
        train_stats = _train_epoch(cfg, model, optimizer, train_set, device, dist, generator, epoch, progress and dist.is_main)
        train_seconds = time.perf_counter() - t0
        if dist.is_main:
            result = evaluate(net, test_set, device, batch_size=max(cfg.batch_size, 64), progress=progress)
            record = {
                "epoch": epoch,
                "train_loss": train_stats["loss"],
                "train_accuracy": train_stats["accuracy"],
                "test_loss": result.loss,
                "test_accuracy": result.accuracy,
                "td_rate": td_rate if cfg.cell == "cbm" else None,
                "seconds": time.perf_counter() - t0,  # the epoch's training and evaluation
                "train_seconds": train_seconds,
            }
            if cfg.task == "cat-dog":
                record["test_accuracy_10_50"] = _accuracy_10_50(result)
            records.append(record)
            write_metrics(out_dir / METRICS, records)
            plot_curves(records, out_dir / CURVES, title=f"{cfg.task}: {cfg.layers}-layer {cfg.cell}")
            save_atomic(
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "rng": rng_state(),
                    "architecture": cfg.architecture(),
                    "config": cfg.to_dict(),
                },
                out_dir / CHECKPOINT,
            )
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.3f}"
                f" | test loss {result.loss:.4f} acc {result.accuracy:.3f} | {record['seconds']:.1f}s",
                file=log,
            )
        barrier(dist)
    if not dist.is_main:
        return {}
    if result is None:  # resumed a finished run: evaluate what the checkpoint holds
        result = evaluate(net, test_set, device, batch_size=max(cfg.batch_size, 64))
    summary = {
        "task": cfg.task,
        "cell": cfg.cell,
        "layers": cfg.layers,
        "hidden": cfg.hidden,
        "epochs": cfg.epochs,
        "test_accuracy": result.accuracy,
        "train_accuracy": records[-1]["train_accuracy"] if records else None,
        "seconds": round(time.perf_counter() - started, 2),
        # Training time per epoch (evaluation and checkpoints excluded), over the epochs this process ran.
        "seconds_per_epoch": (round(sum(r["train_seconds"] for r in records) / len(records), 2) if records else None),
        "parameters": sum(p.numel() for p in net.parameters()),
        "device": str(device),
        "backend": cfg.backend,
        "world_size": dist.world_size,
        "out": str(out_dir),
        "curves": str(out_dir / CURVES),
    }
    if cfg.task == "cat-dog":
        summary.update(_distance_report(result, out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _task_options(cfg: TrainConfig) -> Dict[str, int]:
    if cfg.task == "cat-dog":
        return {"length": cfg.frames, "size": cfg.image_size}
    return {"frames": cfg.frames, "size": cfg.image_size}


def _train_epoch(
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: SequenceDataset,
    device: torch.device,
    dist: DistInfo,
    generator: torch.Generator,
    epoch: int,
    show: bool,
) -> Dict[str, float]:
    """One pass over the (sharded) training set; returns mean loss and accuracy on this process."""
    model.train()
    per_step = cfg.batch_size * dist.world_size
    steps = math.ceil(len(data) / per_step)
    perm = torch.randperm(len(data), generator=generator)
    perm = perm.repeat(math.ceil(steps * per_step / len(data)))[: steps * per_step]  # pad as DistributedSampler
    loss_sum, correct, count = 0.0, 0, 0

    def update() -> None:
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bar = step_bar(range(steps), f"epoch {epoch + 1}/{cfg.epochs}", show)
    for step in bar:
        lo = step * per_step + dist.rank * cfg.batch_size
        idx = perm[lo : lo + cfg.batch_size]
        x = data.frames[idx].transpose(0, 1).to(device)
        y = data.targets[idx].t().to(device)
        clips = (
            sample_clips(data.length, cfg.clip_min, cfg.clip_max, cfg.overlap, generator)
            if cfg.clip_max is not None
            else [Clip(0, data.length)]
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg.lr, cfg.lr_schedule, (epoch + step / steps) / cfg.epochs)
        optimizer.zero_grad(set_to_none=True)
        stats = overlap_training_step(
            model, x, y, clips, cfg.coherence_lambda, cfg.handoff, step=update, coherence_on=cfg.coherence_on
        )
        loss_sum += stats["loss"]
        correct += stats["correct"]
        count += stats["count"]
        bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}", acc=f"{correct / max(count, 1):.3f}")
    return {"loss": loss_sum / steps, "accuracy": correct / max(count, 1)}


def _accuracy_10_50(result: EvalResult) -> float:
    """Cat-dog: exact-distance accuracy pooled over distances 10..50 (classes 11..51)."""
    return result.pooled_accuracy(range(CAT_DOG_RANGE.start + 1, CAT_DOG_RANGE.stop + 1))


def _distance_report(result: EvalResult, out_dir: Path) -> Dict:
    """Cat-dog: accuracy per distance (class ``d + 1``), its plot, and the pooled 10..50 accuracy."""
    by_class = result.accuracy_by_class()
    by_distance = {k - 1: acc for k, acc in by_class.items()}
    distances = sorted(by_distance)
    plot_series(
        {"exact-distance accuracy": [by_distance[d] for d in distances]},
        distances, out_dir / DISTANCE_PLOT, "frames since the cat (-1: before it)", "accuracy", "cat-dog: accuracy by distance",
    )
    return {
        "test_accuracy_10_50": _accuracy_10_50(result),
        "accuracy_by_distance": {str(d): round(by_distance[d], 4) for d in distances},
        "distance_plot": str(out_dir / DISTANCE_PLOT),
    }
