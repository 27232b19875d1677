"""``deeprnn compare``: a grid of cells x depths under one budget, as a table and a plot."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from .config import TrainConfig
from .metrics import plot_series, read_metrics

TrainFn = Callable[[TrainConfig, Path], Dict]


def run_grid(base: TrainConfig, cells: Sequence[str], depths: Sequence[int], out_dir: Path, train_fn: TrainFn) -> List[Dict]:
    """Train every ``(cell, depth)`` with ``base``'s other options into ``out_dir/<cell>-<depth>``.

    Every run is validated before the first one starts. Writes ``compare.md`` (a Markdown table),
    ``compare.png`` (test accuracy per epoch, one line per run) and ``compare.json``; returns the summaries.
    """
    configs = [dataclasses.replace(base, cell=c, layers=d) for c in cells for d in depths]
    for cfg in configs:
        cfg.validate()
    out_dir = Path(out_dir)
    summaries = [train_fn(cfg, out_dir / f"{cfg.cell}-{cfg.layers}") for cfg in configs]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out_dir / "compare.md").write_text(markdown_table(summaries))
    curves = {f"{s['cell']} x{s['layers']}": [r["test_accuracy"] for r in read_metrics(Path(s["out"]) / "metrics.jsonl")] for s in summaries}
    epochs = list(range(1, base.epochs + 1))
    plot_series(curves, epochs, out_dir / "compare.png", "epoch", "test accuracy", f"{base.task}: cells x depths")
    return summaries


def markdown_table(summaries: Sequence[Dict]) -> str:
    """One row per run: cell, layers, parameters, train and test accuracy, training seconds per epoch and the
    run's total seconds (evaluation included)."""
    lines = [
        "| cell | layers | parameters | train accuracy | test accuracy | s/epoch | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        per_epoch = "-" if s.get("seconds_per_epoch") is None else f"{s['seconds_per_epoch']:.1f}"
        lines.append(
            f"| {s['cell']} | {s['layers']} | {s['parameters']:,} | {s['train_accuracy']:.3f} | "
            f"{s['test_accuracy']:.3f} | {per_epoch} | {s['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"
