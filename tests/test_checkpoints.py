"""Safe checkpoints: weights-only loading, a refused pickled callable (file untouched, exit code 2), atomic records."""
import os
from pathlib import Path

import pytest
import torch

from deeprnn_cuda.cli import main
from deeprnn_cuda.training import UnsafeCheckpointError, load_checkpoint
from deeprnn_cuda.training.checkpoint import remove_stale_temporaries, write_text_atomic

TINY = [
    "--layers", "1", "--hidden", "2", "--frames", "3", "--image-size", "8", "--train-size", "4",
    "--test-size", "2", "--batch-size", "4", "--backend", "reference", "--no-progress",
]


class _RunsCode:
    """Unpickling this calls ``os.makedirs(marker)``: what a malicious checkpoint would do, made visible."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def _malicious_checkpoint(path: Path, marker: Path) -> bytes:
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 0, "payload": _RunsCode(marker)}, path)
    return path.read_bytes()


def test_a_real_training_checkpoint_loads_weights_only(tmp_path, capsys):
    """Everything the training loop saves is in torch's weights-only allow-list (no extra type needed)."""
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "rng", "architecture", "config"} <= set(ckpt)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 0


def test_a_pickled_callable_is_refused_and_never_run(tmp_path):
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "code-ran"
    before = _malicious_checkpoint(path, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "os.makedirs" in message and str(path) in message
    assert not marker.exists(), "loading the checkpoint ran its payload"
    assert path.read_bytes() == before


def test_resume_from_a_malicious_checkpoint_exits_2_with_one_line_and_leaves_it(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    out.mkdir()
    path = out / "checkpoint.pt"
    before = _malicious_checkpoint(path, marker)
    stamp = path.stat().st_mtime_ns
    assert main(["train", *TINY, "--epochs", "1", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deeprnn train: error: --resume: refusing to load"), err
    assert not marker.exists()
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # nothing else written either


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read checkpoint" in err, err


def test_atomic_text_write_and_stale_temporaries(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text_atomic(path, "old\n")
    (tmp_path / ".metrics.jsonl.abc123.tmp").write_text("half")  # what a killed writer leaves
    (tmp_path / ".other.jsonl.abc123.tmp").write_text("not ours")
    remove_stale_temporaries(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.jsonl.abc123.tmp", "metrics.jsonl"]
    assert path.read_text() == "old\n"
