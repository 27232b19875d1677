"""Moving (Fashion-)MNIST video prediction under a wall-clock budget, evaluated with OpenSTL's metrics.

:func:`run_moving_mnist` trains a :class:`PatchRecurrentPredictor` (deep CBM or ConvLSTM) on sequences drawn
on the fly (:class:`~deeprnn_cuda.data.moving_mnist.MovingMNIST`, observe 10, predict 10), then measures
MSE, MAE, SSIM and PSNR per predicted frame (:func:`~deeprnn_cuda.metrics.openstl_frame_metrics`) on the
fixed seeded test set, next to two baselines: copying the last observed frame and the all-black frame.

As in :mod:`.video_task`, the first ``teacher_forcing`` fraction of the budget trains teacher-forced (every
frame from the true frames before it, one call of the stack), the rest closed loop on the predicted frames;
the loss is the binary cross entropy on the frame logits (see :mod:`.video_task` on why not the MSE) plus
``ssim_weight * (1 - SSIM)`` of the predicted frames (OpenSTL's SSIM, in float32). The cross entropy alone
is minimized by the expected frame, which after a few frames is a gray haze over wherever the objects might
be; SSIM punishes a haze on a black background hard (an exactly black frame scores higher), so the SSIM term
teaches the model to keep the background black where it is unsure.

The training loop (:func:`train_predictor`) and the evaluation with its report (:func:`evaluate_and_report`)
serve the frames task (:mod:`.frames`) too; each task passes its batches, its teacher-forcing criterion and
what its checkpoint holds beyond the weights and counters.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Protocol, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from ..data.moving_mnist import MovingMNIST
from ..metrics import OPENSTL_SSIM, openstl_frame_metrics, ssim
from ..models.patch_predictor import PatchRecurrentPredictor
from .checkpoint import (
    read_resume_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_atomic,
    set_rng_state,
    write_text_atomic,
)
from .metrics import plot_series, pyplot, write_metrics
from .progress import budget_bar, step_bar

METRIC_NAMES = ("mse", "mae", "ssim", "psnr")
CHECKPOINT = "checkpoint.pt"
CURVES = "curves.png"
TEST_SEED_OFFSET = 1_000_003
"""The test set's seed is ``seed + TEST_SEED_OFFSET`` (drawn from the test images, disjoint from training)."""


@dataclass
class MovingMNISTConfig:
    """One run; ``budget_s`` bounds the training time (evaluation excluded), ``max_steps`` the steps (0: none).
    ``task`` only names the run in its records (``deeprnn train --task``)."""

    task: str = "moving-fmnist"
    cell: str = "cbm"
    layers: int = 15
    hidden: int = 16
    patch: int = 4
    kernel_size: int = 3
    shortcut_every: int = 2
    observe: int = 10
    predict: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    budget_s: float = 600.0
    max_steps: int = 0
    teacher_forcing: float = 0.4
    ssim_weight: float = 3.0
    test_size: int = 1000
    seed: int = 0
    backend: str = "auto"
    data_dir: Optional[str] = None


def prediction_loss(logits: torch.Tensor, video: torch.Tensor, observe: int, ssim_weight: float) -> torch.Tensor:
    """The training loss of :meth:`PatchRecurrentPredictor.rollout`'s ``logits`` of frames ``1 .. T-1`` of
    ``video (B, T, C, H, W)``: the binary cross entropy over all of them, plus ``ssim_weight * (1 - SSIM)``
    (OpenSTL's SSIM, float32, averaged) of the frames after the first ``observe``."""
    loss = F.binary_cross_entropy_with_logits(logits, video[:, 1:])
    if ssim_weight:
        predicted = torch.sigmoid(logits[:, observe - 1:])
        similarity = ssim(predicted, video[:, observe:], **OPENSTL_SSIM, dtype=torch.float32)
        loss = loss + ssim_weight * (1 - similarity.mean())
    return loss


@torch.no_grad()
def evaluate_frames(predict, videos: torch.Tensor, observe: int, batch_size: int, progress: bool = False,
                    desc: str = "evaluating") -> Dict[str, List[float]]:
    """Mean of every OpenSTL metric per predicted frame: ``predict(observed, num_future)`` on ``videos``;
    ``progress`` shows a bar of the batches on stderr."""
    future = videos.shape[1] - observe
    sums = {k: torch.zeros(future, dtype=torch.float64) for k in METRIC_NAMES}
    for batch in step_bar(videos.split(batch_size), desc, progress, unit="batch"):
        values = openstl_frame_metrics(predict(batch[:, :observe], future), batch[:, observe:])
        for k in METRIC_NAMES:
            sums[k] += values[k].sum(dim=0)
    return {k: (v / len(videos)).tolist() for k, v in sums.items()}


def copy_last_frame(observed: torch.Tensor, num_future: int) -> torch.Tensor:
    """Baseline: the last observed frame, repeated."""
    return observed[:, -1:].expand(-1, num_future, *observed.shape[2:])


def all_black(observed: torch.Tensor, num_future: int) -> torch.Tensor:
    """Baseline: zero frames."""
    return observed.new_zeros(observed.shape[0], num_future, *observed.shape[2:])


def results_table(results: Dict[str, Dict[str, List[float]]]) -> str:
    """A Markdown table: one row per (model, metric), a column per predicted frame and the average."""
    n = len(next(iter(results.values()))["mse"])
    head = "| model | metric | " + " | ".join(f"T{t + 1}" for t in range(n)) + " | avg |"
    rows = [head, "|---|---|" + "---:|" * (n + 1)]
    for name, metrics in results.items():
        for k in METRIC_NAMES:
            fmt = ".3f" if k == "ssim" else ".2f"
            values = metrics[k] + [sum(metrics[k]) / n]
            rows.append(f"| {name} | {k.upper()} | " + " | ".join(format(v, fmt) for v in values) + " |")
    return "\n".join(rows) + "\n"


def prediction_figure(videos: torch.Tensor, predictions: torch.Tensor, observe: int, title: str):
    """A matplotlib figure of ``videos (n, T, C, H, W)`` and their ``predictions (n, T - observe, C, H, W)``
    (grayscale for one channel, RGB for three):
    per sequence a row of the true frames and under it the predicted ones (blank under the observed frames),
    the rows labelled, the frames numbered, a red line where prediction starts, and ``title`` on top."""
    plt = pyplot()
    n, T, C, H, W = videos.shape
    gap = 2
    mosaic = torch.full((2 * n * (H + gap) - gap, T * (W + gap) - gap, C), 0.5)
    for i in range(n):
        for t in range(T):
            shown = [(2 * i, videos[i, t]), (2 * i + 1, predictions[i, t - observe] if t >= observe else None)]
            for r, image in shown:
                tile = torch.zeros(H, W, C) if image is None else image.clamp(0, 1).permute(1, 2, 0)
                mosaic[r * (H + gap):r * (H + gap) + H, t * (W + gap):t * (W + gap) + W] = tile
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * T, 0.6 + 0.45 * 2 * n))
    ax.imshow(mosaic.squeeze(2).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([t * (W + gap) + W / 2 for t in range(T)], [str(t + 1) for t in range(T)], fontsize=7)
    ax.set_yticks([r * (H + gap) + H / 2 for r in range(2 * n)],
                  [f"{i + 1}: {row}" for i in range(n) for row in ("true", "predicted")], fontsize=7)
    ax.set_xlabel("frame")
    # between the last observed frame and the first predicted one
    ax.axvline(observe * (W + gap) - gap / 2 - 0.5, color="red", linewidth=1.5)
    ax.text(observe * (W + gap), -2, "prediction starts", color="red", fontsize=7, va="bottom")
    ax.set_title(title, fontsize=9, pad=14)
    fig.tight_layout()
    return fig


def save_predictions_png(videos: torch.Tensor, predictions: torch.Tensor, observe: int, path: Path,
                         title: str) -> None:
    """Write :func:`prediction_figure` to ``path``."""
    fig = prediction_figure(videos, predictions, observe, title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


class PredictionRunConfig(Protocol):
    """The options :func:`train_predictor` and :func:`evaluate_and_report` read: the fields that
    :class:`MovingMNISTConfig` and the frames task's ``FramesConfig`` (both dataclasses) share."""

    task: str
    cell: str
    layers: int
    hidden: int
    observe: int
    predict: int
    budget_s: float
    max_steps: int
    ssim_weight: float


@dataclass
class TrainingState:
    """Where training stands, as a checkpoint records it: steps taken, seconds trained and the loss records."""

    step: int = 0
    trained: float = 0.0
    records: List[Dict] = field(default_factory=list)

    @classmethod
    def resume(cls, ckpt: Optional[Dict], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
        """A fresh start without ``ckpt``; else ``ckpt``'s counters, its weights and optimizer state loaded into
        ``model`` and ``optimizer``."""
        if ckpt is None:
            return cls()
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return cls(ckpt["step"], ckpt["trained_seconds"], ckpt["records"])


def train_predictor(cfg: PredictionRunConfig, model: PatchRecurrentPredictor, optimizer: torch.optim.Optimizer,
                    batches: Iterator[torch.Tensor], state: TrainingState, out_dir: Path, *, name: str,
                    teacher_forced: Callable[[float, int], bool], curves_title: str, architecture: Dict[str, object],
                    random_state: Callable[[], Dict[str, object]] = dict, progress: bool) -> None:
    """Train ``model`` on ``batches (B, T, C, H, W)`` with :func:`prediction_loss` until ``cfg.budget_s`` seconds
    trained or ``cfg.max_steps`` steps (0: no cap), counting on from ``state``, which it advances.

    ``teacher_forced(seconds_trained, step)`` says whether the next step is teacher-forced. Every 10 steps and
    after the last one it appends the mean loss to ``state.records`` and rewrites ``out_dir``'s
    ``metrics.jsonl``, ``curves.png`` (titled ``curves_title``) and ``checkpoint.pt`` (weights, optimizer,
    ``state``, ``random_state()``, ``architecture`` and the config; atomically, so that a killed run resumes
    from the last one). ``name`` labels the progress bar, shown on stderr with ``progress``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir / CHECKPOINT)

    def save() -> None:
        write_metrics(out_dir / "metrics.jsonl", state.records)
        plot_series({"train loss": [r["train_loss"] for r in state.records]}, [r["step"] for r in state.records],
                    out_dir / CURVES, "step", "loss", curves_title)
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": state.step,
                     "trained_seconds": state.trained, "records": state.records, **random_state(),
                     "architecture": architecture, "config": asdict(cfg)}, out_dir / CHECKPOINT)

    # a step cap gives a bar in steps; the budget alone, one in seconds trained that still names the step
    bar = (step_bar(desc=name, show=progress, total=cfg.max_steps) if cfg.max_steps > 0
           else budget_bar(cfg.budget_s, desc=name, show=progress))
    bar.update(state.step if cfg.max_steps > 0 else min(state.trained, cfg.budget_s))
    window: List[float] = []
    model.train()
    while state.trained < cfg.budget_s and (cfg.max_steps <= 0 or state.step < cfg.max_steps):
        batch = next(batches)
        t0 = time.perf_counter()
        forced = teacher_forced(state.trained, state.step)
        logits = model.rollout(batch, cfg.observe, teacher_forced=forced)
        loss = prediction_loss(logits, batch, cfg.observe, cfg.ssim_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - t0
        state.trained += seconds
        state.step += 1
        window.append(loss.item())
        bar.update(1 if cfg.max_steps > 0 else min(seconds, cfg.budget_s - bar.n))
        bar.set_postfix_str(f"step {state.step}, {'teacher-forced' if forced else 'closed-loop'}, "
                            f"loss {window[-1]:.4f}")
        if state.step % 10 == 0 or state.trained >= cfg.budget_s or state.step == cfg.max_steps:  # and the last step's
            state.records.append({"step": state.step, "train_seconds": round(state.trained, 2),
                                  "train_loss": sum(window) / len(window), "teacher_forced": forced})
            window = []
            save()
    bar.close()


def _averages(metrics: Dict[str, List[float]]) -> Dict[str, float]:
    """``{metric}_avg``: each metric's mean over the predicted frames."""
    return {f"{k}_avg": sum(v) / len(v) for k, v in metrics.items()}


def evaluate_and_report(cfg: PredictionRunConfig, model: PatchRecurrentPredictor, videos: torch.Tensor,
                        state: TrainingState, out_dir: Path, *, name: str, batch_size: int, shown: int,
                        noun: str, details: Dict[str, object], shown_sources: Optional[List[Dict]] = None,
                        keep_predictions: bool = False, progress: bool, log: TextIO) -> Dict:
    """Evaluate the trained ``model`` (named ``name``) and the copy-last and all-black baselines on the test
    ``videos (N, T, C, H, W)`` with :func:`evaluate_frames` in batches of ``batch_size``, write the run's
    report in ``out_dir``, print the table to ``log`` and return the summary.

    Files: ``metrics.jsonl`` (``state.records``, then one test record per model and baseline), ``results.md``
    (:func:`results_table`), ``predictions.png`` (the first ``shown`` videos, called test ``noun`` in its
    title), with ``keep_predictions`` ``predictions.npy`` (their predicted frames), ``model.pt`` (weights and
    config) and ``summary.json``. The summary holds ``details`` after the parameter count and, given,
    ``shown_sources`` (what the pictured videos are) as ``shown`` after the baselines.
    """
    model.eval()
    start = time.perf_counter()
    results = {name: evaluate_frames(model, videos, cfg.observe, batch_size, progress, f"evaluating {name}")}
    eval_seconds = time.perf_counter() - start
    results["copy last frame"] = evaluate_frames(copy_last_frame, videos, cfg.observe, batch_size)
    results["all black"] = evaluate_frames(all_black, videos, cfg.observe, batch_size)
    tests = [{"test": model_name, **metrics, **_averages(metrics)} for model_name, metrics in results.items()]
    write_metrics(out_dir / "metrics.jsonl", state.records + tests)
    table = results_table(results)
    write_text_atomic(out_dir / "results.md", table)
    pictured = videos[:shown]
    with torch.no_grad():
        predicted = model(pictured[:, :cfg.observe], cfg.predict)
    title = (f"{cfg.task}: {name} after {state.step} steps; observe {cfg.observe} frames, predict {cfg.predict} "
             f"(the first {len(pictured)} test {noun})")
    save_predictions_png(pictured, predicted, cfg.observe, out_dir / "predictions.png", title)
    if keep_predictions:
        np.save(out_dir / "predictions.npy", predicted.numpy())
    save_atomic({"model": model.state_dict(), "config": asdict(cfg)}, out_dir / "model.pt")
    summary = {
        "task": cfg.task, "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "steps": state.step,
        "train_seconds": round(state.trained, 1), "eval_seconds": round(eval_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()), **details, **_averages(results[name]),
        "baselines": {b: _averages(results[b]) for b in ("copy last frame", "all black")},
        **({} if shown_sources is None else {"shown": shown_sources}),
        "config": asdict(cfg), "out": str(out_dir), "curves": str(out_dir / CURVES),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(table, end="", file=log)
    return summary


def _architecture(cfg: MovingMNISTConfig) -> Dict[str, object]:
    """The options a checkpoint's weights depend on (a resumed run must match them)."""
    return {k: getattr(cfg, k) for k in ("task", "cell", "layers", "hidden", "patch", "kernel_size", "shortcut_every")}


def run_moving_mnist(cfg: MovingMNISTConfig, out_dir: Path, progress: bool = False, log=None,
                     resume: bool = False) -> Dict:
    """Train ``cfg``'s predictor within its budget, evaluate, and write the run's files in ``out_dir``.

    Files: ``metrics.jsonl`` (training loss every 10 steps, then one test record per model and baseline),
    ``curves.png`` (the training loss), ``checkpoint.pt`` (every 10 steps and at the end: weights, optimizer,
    step, seconds trained, random states), ``results.md`` (the per-horizon table), ``predictions.png`` (4 test
    sequences), ``model.pt`` (the final weights and config) and ``summary.json``. With ``resume`` it continues
    from ``out_dir/checkpoint.pt`` until the budget (seconds trained counted over both runs) or ``max_steps``;
    the sequences it draws are those the uninterrupted run would. Returns the summary. Raises
    :class:`~deeprnn_cuda.data.idx.MissingDataError` when the IDX files are missing and
    :class:`~deeprnn_cuda.training.config.ConfigError` (``--resume``) for a missing or mismatched checkpoint.
    """
    log = log or sys.stderr
    out_dir = Path(out_dir)
    ckpt = read_resume_checkpoint(out_dir / CHECKPOINT, _architecture(cfg)) if resume else None
    frames = cfg.observe + cfg.predict
    train_data = MovingMNIST.from_idx("train", cfg.data_dir, frames=frames)
    test = MovingMNIST.from_idx("test", cfg.data_dir, frames=frames).fixed(cfg.test_size, cfg.seed + TEST_SEED_OFFSET)
    torch.manual_seed(cfg.seed)
    model = PatchRecurrentPredictor(1, cfg.hidden, cfg.layers, cfg.cell, cfg.patch, cfg.kernel_size,
                                    cfg.shortcut_every, cfg.backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    state = TrainingState.resume(ckpt, model, optimizer)
    if ckpt is not None:
        g.set_state(ckpt["generator"])
        set_rng_state(ckpt["rng"])
    name = f"{cfg.layers}-layer {cfg.cell}"
    # drawn lazily, one batch per step, so that the generator's state at a checkpoint is the one to resume from
    batches = (train_data.sample(cfg.batch_size, g) for _ in itertools.count())
    train_predictor(cfg, model, optimizer, batches, state, out_dir, name=name,
                    teacher_forced=lambda trained, step: trained < cfg.teacher_forcing * cfg.budget_s,
                    curves_title=f"{cfg.task}: {name}", architecture=_architecture(cfg),
                    random_state=lambda: {"generator": g.get_state(), "rng": rng_state()}, progress=progress)
    print(f"trained {state.step} steps in {state.trained:.0f} s; evaluating on {cfg.test_size} test sequences",
          file=log)
    return evaluate_and_report(cfg, model, test, state, out_dir, name=name, batch_size=64, shown=4,
                               noun="sequences", details={"test_size": cfg.test_size}, progress=progress, log=log)
