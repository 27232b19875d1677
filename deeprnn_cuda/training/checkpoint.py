"""Checkpoints written atomically (a crash mid-save never corrupts the last good one) and read safely.

Reading uses ``torch.load(weights_only=True)``: a checkpoint may hold tensors and plain data only (dicts, lists,
tuples, numbers, strings, None), never objects whose unpickling runs code, so a file from elsewhere cannot
execute anything when ``deeprnn train --resume`` or :func:`load_checkpoint` reads it. Everything the training
loop saves (state dicts, optimizer state, RNG states, the config as a dict) is in torch's default weights-only
allow-list, so no extra type is allow-listed; a test saves a real checkpoint and reads it back this way.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict

import torch

from .config import ConfigError

FAULT_PAUSE_ENV = "DEEPRNN_TEST_CHECKPOINT_PAUSE"
"""Test hook: seconds to wait with a new checkpoint written to its temporary file but not yet in place, so that
the fault test (tests/test_fault_resume.py) can land a SIGKILL inside a checkpoint write. Unset: no pause."""


class UnsafeCheckpointError(ValueError):
    """The checkpoint holds something other than tensors and plain data (e.g. a pickled callable): refused."""


def _replace_atomically(path: Path, write: Callable[[BinaryIO], None], pause: float = 0.0) -> None:
    """``write`` a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if pause > 0:
                time.sleep(pause)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s folder, fsync it, then ``os.replace`` it over ``path``."""
    _replace_atomically(path, lambda f: torch.save(obj, f), float(os.environ.get(FAULT_PAUSE_ENV) or 0))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content by ``text`` so that a reader (or a resumed run) sees the old or the new file,
    never a truncated one."""
    _replace_atomically(path, lambda f: f.write(text.encode()))


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files a killed writer of ``path`` left behind (the last good ``path`` is untouched)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` onto the CPU, tensors and plain data only.

    Raises :class:`UnsafeCheckpointError` (one line, naming the offending global) for a file that would need to
    run code to load, e.g. one carrying a pickled callable; the file is only read.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {found.group(1)}" if found else "an object that is not a tensor or plain data"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds {what}, and a checkpoint may hold only tensors and plain data "
            "(loading it could run code)"
        ) from None


def read_resume_checkpoint(path: Path, architecture: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint at ``path`` that ``--resume`` continues, checked to be of the run's ``architecture`` (the
    options its weights depend on); any problem is a :class:`~deeprnn_cuda.training.config.ConfigError` of
    ``--resume`` in one line, and the file is left as it is."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("--resume", f"no checkpoint to resume from at {path}")
    try:
        ckpt = load_checkpoint(path)
    except UnsafeCheckpointError as e:  # a file that would run code to load: refused, and left as it is
        raise ConfigError("--resume", str(e)) from None
    except Exception as e:  # a truncated or foreign file: say so in one line
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError("--resume", f"cannot read checkpoint {path}: {type(e).__name__}: {first_line}") from None
    theirs = ckpt.get("architecture")
    if theirs != architecture:
        theirs = theirs or {}
        diff = ", ".join(f"{k}={theirs.get(k)!r} (asked {v!r})" for k, v in architecture.items() if theirs.get(k) != v)
        raise ConfigError("--resume", f"checkpoint {path} is from another architecture: {diff}")
    return ckpt


def rng_state() -> Dict[str, Any]:
    """The global CPU (and CUDA, if any) random generator states."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
