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
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..data.moving_mnist import MovingMNIST
from ..metrics import OPENSTL_SSIM, openstl_frame_metrics, ssim
from ..models.patch_predictor import PatchRecurrentPredictor
from .checkpoint import read_resume_checkpoint, remove_stale_temporaries, rng_state, save_atomic, set_rng_state
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
    records: List[Dict] = []
    trained, step, window = 0.0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        g.set_state(ckpt["generator"])
        set_rng_state(ckpt["rng"])
        trained, step, records = ckpt["trained_seconds"], ckpt["step"], ckpt["records"]
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir / CHECKPOINT)
    name = f"{cfg.layers}-layer {cfg.cell}"

    def save() -> None:
        write_metrics(out_dir / "metrics.jsonl", records)
        plot_series({"train loss": [r["train_loss"] for r in records]}, [r["step"] for r in records],
                    out_dir / CURVES, "step", "loss", f"{cfg.task}: {name}")
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "trained_seconds": trained, "records": records, "generator": g.get_state(),
                     "rng": rng_state(), "architecture": _architecture(cfg), "config": asdict(cfg)},
                    out_dir / CHECKPOINT)

    # a step cap gives a bar in steps; the budget alone, one in seconds trained that still names the step
    bar = (step_bar(desc=name, show=progress, total=cfg.max_steps) if cfg.max_steps > 0
           else budget_bar(cfg.budget_s, desc=name, show=progress))
    bar.update(step if cfg.max_steps > 0 else min(trained, cfg.budget_s))
    while trained < cfg.budget_s and (cfg.max_steps <= 0 or step < cfg.max_steps):
        batch = train_data.sample(cfg.batch_size, g)
        t0 = time.perf_counter()
        teacher_forced = trained < cfg.teacher_forcing * cfg.budget_s
        logits = model.rollout(batch, cfg.observe, teacher_forced=teacher_forced)
        loss = prediction_loss(logits, batch, cfg.observe, cfg.ssim_weight)
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
    print(f"trained {step} steps in {trained:.0f} s; evaluating on {cfg.test_size} test sequences", file=log)
    model.eval()
    start = time.perf_counter()
    results = {name: evaluate_frames(model, test, cfg.observe, 64, progress, f"evaluating {name}")}
    eval_seconds = time.perf_counter() - start
    results["copy last frame"] = evaluate_frames(copy_last_frame, test, cfg.observe, 64)
    results["all black"] = evaluate_frames(all_black, test, cfg.observe, 64)
    tests = [{"test": model_name, **metrics, **{f"{k}_avg": sum(v) / len(v) for k, v in metrics.items()}}
             for model_name, metrics in results.items()]
    write_metrics(out_dir / "metrics.jsonl", records + tests)
    table = results_table(results)
    (out_dir / "results.md").write_text(table)
    with torch.no_grad():
        shown = test[:4]
        title = (f"{cfg.task}: {name} after {step} steps; observe {cfg.observe} frames, predict {cfg.predict} "
                 f"(the first {len(shown)} test sequences)")
        save_predictions_png(shown, model(shown[:, :cfg.observe], cfg.predict), cfg.observe,
                             out_dir / "predictions.png", title)
    torch.save({"model": model.state_dict(), "config": asdict(cfg)}, out_dir / "model.pt")
    summary = {
        "task": cfg.task, "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "steps": step,
        "train_seconds": round(trained, 1), "eval_seconds": round(eval_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()), "test_size": cfg.test_size,
        **{f"{k}_avg": sum(v) / len(v) for k, v in results[name].items()},
        "baselines": {b: {f"{k}_avg": sum(v) / len(v) for k, v in results[b].items()} for b in ("copy last frame", "all black")},
        "config": asdict(cfg), "out": str(out_dir), "curves": str(out_dir / CURVES),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table, end="", file=log)
    return summary
