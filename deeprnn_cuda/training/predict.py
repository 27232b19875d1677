"""``deeprnn predict``: a trained run's model on new frames, no ground truth needed.

:func:`load_run` rebuilds a run's predictor from its ``model.pt`` (a ``frames`` or Moving-MNIST run);
:func:`predict_frames` reads a video file, a frame folder or an array, observes ``observe`` of its frames
(the last ones, or from ``start``) and writes the frames after them: one PNG each, a ``.npy`` and an animated
GIF of the observed and predicted frames, the predicted ones framed in red.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..data.frame_sequences import read_sequence, scan_sequence
from ..models.patch_predictor import PatchRecurrentPredictor
from .checkpoint import load_checkpoint
from .frames import build_model

MARKER = (220, 30, 30)
"""RGB of the border that marks predicted frames in the GIF (observed frames have a black one)."""


def load_run(run_dir: Path) -> Tuple[PatchRecurrentPredictor, Dict]:
    """The trained predictor of ``run_dir/model.pt`` in eval mode, gradients off, and the run's config."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise ValueError(f"run folder {run_dir} has no model.pt (written at the end of deeprnn train)")
    saved = load_checkpoint(path)
    model = build_model(saved["config"])
    model.load_state_dict(saved["model"])
    return model.eval().requires_grad_(False), saved["config"]


def frame_shape(config: Dict) -> Tuple[int, int, int]:
    """``(C, H, W)`` of a run's frames (a Moving-MNIST run: one 64x64 channel)."""
    return config.get("channels") or 1, config.get("height") or 64, config.get("width") or 64


def _image(frame: torch.Tensor) -> Image.Image:
    pixels = (frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def save_gif(observed: torch.Tensor, predicted: torch.Tensor, path: Path, min_side: int = 128) -> None:
    """An animated GIF of ``observed`` then ``predicted`` frames ``(T, C, H, W)``, enlarged (nearest) to at least
    ``min_side`` pixels, each in a border: black around observed frames, red (:data:`MARKER`) around predicted."""
    H, W = observed.shape[-2:]
    scale = max(1, -(-min_side // min(H, W)))
    border = max(2, scale)
    frames = []
    for t, frame in enumerate(torch.cat([observed, predicted])):
        canvas = Image.new("RGB", (W * scale + 2 * border, H * scale + 2 * border), MARKER if t >= len(observed) else 0)
        canvas.paste(_image(frame).convert("RGB").resize((W * scale, H * scale), Image.NEAREST), (border, border))
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)


def predict_frames(run_dir: Path, input_path: Path, out_dir: Path, predict: Optional[int] = None,
                   start: Optional[int] = None) -> Dict:
    """Predict the ``predict`` frames (default: the run's) after ``observe`` frames of ``input_path`` starting at
    ``start`` (default: its last ``observe``), with the run in ``run_dir``; frames are resized as in training.

    Writes ``predicted_00.png ...``, ``predicted.npy`` (``(predict, C, H, W)`` float32 in ``[0, 1]``) and
    ``prediction.gif`` in ``out_dir``; returns what was read and written. Raises ``ValueError`` naming the
    argument or file for bad input, before writing anything.
    """
    model, config = load_run(run_dir)
    observe, predict = config["observe"], config["predict"] if predict is None else predict
    if isinstance(predict, bool) or not isinstance(predict, int) or predict < 1:
        raise ValueError(f"predict must be a positive int, got {predict!r}")
    sequences = scan_sequence(Path(input_path))
    if len(sequences) != 1:
        raise ValueError(f"input {input_path} holds {len(sequences)} arrays; save the one to predict from alone")
    seq = sequences[0]
    C, H, W = frame_shape(config)
    image_size = config.get("image_size")
    if seq.channels != C:
        raise ValueError(f"input {seq.name} has {seq.channels} channel(s), the run's model takes {C}")
    if image_size is None and (seq.height, seq.width) != (H, W):
        raise ValueError(f"input {seq.name} is {seq.height}x{seq.width}, the run's model was trained on {H}x{W} frames")
    last = seq.length - observe
    start = last if start is None else start
    if last < 0:
        raise ValueError(f"input {seq.name} has {seq.length} frames, fewer than the {observe} the model observes")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= last:
        raise ValueError(f"start must be an int in [0, {last}] for {seq.name} ({seq.length} frames, observe {observe}), "
                         f"got {start!r}")
    observed = read_sequence(seq, start, observe, image_size)
    with torch.no_grad():
        predicted = model(observed.unsqueeze(0), predict)[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: List[str] = []
    for k, frame in enumerate(predicted):
        _image(frame).save(out_dir / f"predicted_{k:02d}.png")
        files.append(f"predicted_{k:02d}.png")
    np.save(out_dir / "predicted.npy", predicted.numpy())
    save_gif(observed, predicted, out_dir / "prediction.gif")
    return {"input": seq.name, "start": start, "observe": observe, "predict": predict, "out": str(out_dir),
            "files": files + ["predicted.npy", "prediction.gif"]}
