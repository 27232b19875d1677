"""Training records: ``metrics.jsonl`` (one JSON object per epoch) and the ``curves.png`` plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from .checkpoint import write_text_atomic


def read_metrics(path: Path) -> List[Dict]:
    """Every record in a ``metrics.jsonl`` file (an empty list if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, records: Sequence[Dict]) -> None:
    """Rewrite ``metrics.jsonl`` with ``records``, atomically: a run killed mid-write leaves the previous file,
    which a resumed run reads, never a truncated line."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: Sequence[Dict], path: Path, title: str = "") -> None:
    """Loss (train, test) and accuracy (train, test) per epoch, side by side."""
    plt = pyplot()
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        ax_loss.plot(epochs, [r[key] for r in records], marker="o", label=label)
    for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
        ax_acc.plot(epochs, [r[key] for r in records], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_series(series: Dict[str, Sequence[float]], x: Sequence[float], path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """One line per named series over a shared x axis (accuracy by distance, compare grids)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        ax.plot(x, ys, marker=".", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
