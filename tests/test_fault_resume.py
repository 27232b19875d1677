"""Fault test: ``deeprnn train`` killed with SIGKILL at random moments, resumed each time, ends exactly where an
uninterrupted run ends, and never leaves a checkpoint (or metrics file) that cannot be read.

Kills land during an epoch (a random moment after the run has saved a new checkpoint) and inside a checkpoint
write (the test-only pause of ``DEEPRNN_TEST_CHECKPOINT_PAUSE`` holds the writer between writing the temporary
file and putting it in place; the kill comes while the temporary file exists). The backend is the reference, so
the final parameters, optimizer state and metrics must be bitwise equal. The moments come from a fixed seed.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
import torch

from deeprnn_cuda.training import load_checkpoint
from deeprnn_cuda.training.checkpoint import FAULT_PAUSE_ENV
from deeprnn_cuda.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
TRAIN = [
    "train", "--layers", "2", "--hidden", "3", "--frames", "4", "--image-size", "8", "--train-size", "24",
    "--test-size", "6", "--batch-size", "6", "--epochs", str(EPOCHS), "--td-schedule", "1.0,0.5@2",
    "--backend", "reference", "--no-progress",
]
KILLS = ["epoch", "write", "epoch"]  # in this order, each on the run resumed after the previous one
TIMEOUT = 180.0


def _env(pause: bool) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop(FAULT_PAUSE_ENV, None)
    if pause:
        env[FAULT_PAUSE_ENV] = "60"  # far longer than the test waits: the kill always lands inside the write
    return env


def _start(out: Path, pause: bool = False) -> subprocess.Popen:
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    return subprocess.Popen([sys.executable, "-m", "deeprnn_cuda", *TRAIN, *resume, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(pause), cwd=ROOT)


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns  # os.replace puts a new inode in place


def _wait_for(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {err[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _temporaries(out: Path) -> Set[Path]:
    return set(out.glob(".checkpoint.pt.*.tmp"))


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


def _assert_readable(out: Path) -> Optional[int]:
    """What a killed run left must be readable: the checkpoint (if any) and the metrics; returns its epoch."""
    records = read_metrics(out / "metrics.jsonl")  # a truncated line would raise here
    assert [r["epoch"] for r in records] == list(range(len(records)))
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    assert 0 <= ckpt["epoch"] < EPOCHS and set(ckpt["model"]) and ckpt["architecture"]
    return ckpt["epoch"]


def _run_to_end(out: Path) -> dict:
    proc = _start(out)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _same_state(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _without_seconds(records: List[dict]) -> List[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in records]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = random.Random(15)
    straight, faulty = tmp_path / "straight", tmp_path / "faulty"
    summary = _run_to_end(straight)
    epoch_seconds = max(r["seconds"] for r in read_metrics(straight / "metrics.jsonl"))

    landed = []
    for kind in KILLS:
        before, stale = _stamp(faulty / "checkpoint.pt"), _temporaries(faulty)  # stale: left by an earlier kill
        proc = _start(faulty, pause=kind == "write")
        if kind == "epoch":
            # Once this run has saved a checkpoint of its own, a random moment of the next epoch.
            _wait_for(proc, lambda: _stamp(faulty / "checkpoint.pt") not in (None, before), "a new checkpoint")
            time.sleep(rng.uniform(0.0, epoch_seconds))
            assert proc.poll() is None, "the run finished before the kill: give it more epochs"
        else:
            _wait_for(proc, lambda: bool(_temporaries(faulty) - stale), "a checkpoint write")
        in_write = bool(_temporaries(faulty) - stale)
        _kill(proc)
        epoch = _assert_readable(faulty)
        landed.append(f"{kind} kill (inside a write: {in_write}), checkpoint epoch {epoch}")
        if kind == "write":  # killed inside this run's first write: the previous checkpoint is still in place
            assert in_write and _stamp(faulty / "checkpoint.pt") == before
    resumed = _run_to_end(faulty)
    print("\n".join(landed))

    assert not _temporaries(faulty), "a resumed run cleans up what killed writes left"
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(faulty / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    _same_state(a["model"], b["model"], "model")
    _same_state(a["optimizer"], b["optimizer"], "optimizer")
    assert _without_seconds(read_metrics(straight / "metrics.jsonl")) == _without_seconds(
        read_metrics(faulty / "metrics.jsonl"))
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    assert len(landed) == len(KILLS)
