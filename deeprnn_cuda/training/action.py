"""``deeprnn train --task action``: an action-recognition model trained on videos in ``root/{train,test}/<class>/``.

The videos are video files (:class:`~deeprnn_cuda.data.video_files.VideoFileVideos`, when a class folder of
the training split holds any) or frame folders (:class:`~deeprnn_cuda.data.frame_folder.FrameFolderVideos`);
the model is the paper's :class:`~deeprnn_cuda.models.StandaloneDeepCBM` or
:class:`~deeprnn_cuda.models.BackboneDeepCBM`. Cross entropy on the clip logits, Adam, the Temporal Dropout
schedule per epoch; clip accuracy on the test split after every epoch.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.clip_videos import ClipVideos, subfolders
from ..data.frame_folder import FrameFolderVideos
from ..data.video_files import VIDEO_EXTENSIONS, VideoFileVideos
from .metrics import plot_curves, write_metrics
from .progress import step_bar
from .schedule import TDSchedule

ACTION_MODELS = ("standalone", "backbone")


class ActionDataError(ValueError):
    """The videos under ``data_dir`` cannot be used: a missing split, an empty class, PyAV absent, ..."""


@dataclass
class ActionConfig:
    """One action-recognition run (fields as the ``deeprnn train`` options of the same names)."""

    data_dir: str
    model: str = "backbone"
    cell: str = "cbm"
    hidden: int = 16
    frames: int = 8
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    td_schedule: str = "1.0,0.8@2,0.5@4"
    seed: int = 0
    backend: str = "auto"


def open_videos(root: Union[str, Path], split: str, **options) -> ClipVideos:
    """The dataset of ``root/split``: video files when the split's class folders hold any, else frame folders."""
    folder = Path(root) / split
    has_files = folder.is_dir() and any(
        p.suffix.lower() in VIDEO_EXTENSIONS for d in subfolders(folder) for p in d.iterdir() if p.is_file()
    )
    return (VideoFileVideos if has_files else FrameFolderVideos)(root, split, **options)


def _model(cfg: ActionConfig, num_classes: int) -> torch.nn.Module:
    from ..models import BackboneDeepCBM, StandaloneDeepCBM

    if cfg.model == "standalone":
        return StandaloneDeepCBM(num_classes, width=cfg.hidden, cell=cfg.cell, backend=cfg.backend)
    return BackboneDeepCBM(num_classes, hidden_channels=cfg.hidden, backbone="small", cell=cfg.cell, backend=cfg.backend)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: DataLoader, progress: bool = False) -> Tuple[float, float]:
    """Mean cross entropy and accuracy of ``model`` over ``loader``'s clips."""
    model.eval()
    loss_sum = 0.0
    correct = total = 0
    for clips, labels in step_bar(loader, "evaluating", progress, unit="batch"):
        logits = model(clips)[0]
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train()
    return loss_sum / total, correct / total


def run_action(cfg: ActionConfig, out_dir: Path, progress: bool = False, log=None) -> Dict:
    """Train and evaluate as ``cfg`` says; writes ``metrics.jsonl``, ``curves.png``, ``model.pt`` and
    ``summary.json``.

    Raises :class:`ActionDataError` when the videos of ``cfg.data_dir`` cannot be opened."""
    log = log or sys.stderr
    started = time.perf_counter()
    options = dict(num_frames=cfg.frames, resize_shorter=cfg.image_size, crop_size=cfg.image_size, seed=cfg.seed)
    try:
        train_set, test_set = open_videos(cfg.data_dir, "train", **options), open_videos(cfg.data_dir, "test", **options)
    except (ValueError, ImportError) as err:
        raise ActionDataError(str(err)) from err
    if test_set.classes != train_set.classes:
        raise ActionDataError(f"the test split's classes {test_set.classes} differ from the train split's {train_set.classes}")
    torch.manual_seed(cfg.seed)
    model = _model(cfg, len(train_set.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = TDSchedule.parse(cfg.td_schedule)
    test_loader = DataLoader(test_set, batch_size=cfg.batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: List[Dict] = []
    for epoch in range(cfg.epochs):
        train_set.set_epoch(epoch)
        td_rate = schedule.apply(model, epoch) if cfg.cell == "cbm" else None
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        loss_sum = correct = seen = 0
        for clips, labels in step_bar(loader, f"epoch {epoch + 1}/{cfg.epochs}", progress):
            logits, _ = model(clips)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(-1) == labels).sum())
            seen += len(labels)
        test_loss, test_accuracy = _evaluate(model, test_loader, progress)
        records.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "test_loss": test_loss, "test_accuracy": test_accuracy, "td_rate": td_rate})
        write_metrics(out_dir / "metrics.jsonl", records)
        plot_curves(records, out_dir / "curves.png", title=f"action: {cfg.model} {cfg.cell}")
        print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {records[-1]['train_loss']:.4f} acc "
              f"{records[-1]['train_accuracy']:.3f} | test acc {records[-1]['test_accuracy']:.3f}", file=log)
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "classes": train_set.classes}, out_dir / "model.pt")
    summary = {"task": "action", "model": cfg.model, "cell": cfg.cell, "dataset": type(train_set).__name__,
               "classes": len(train_set.classes), "train_clips": len(train_set), "test_clips": len(test_set),
               "test_accuracy": records[-1]["test_accuracy"], "train_accuracy": records[-1]["train_accuracy"],
               "seconds": round(time.perf_counter() - started, 2), "config": asdict(cfg), "out": str(out_dir),
               "curves": str(out_dir / "curves.png")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
