"""``deeprnn export``: a trained run's predictor as a ``torch.export`` program (``.pt2``) or an ONNX graph.

The exported function maps ``observed (1, observe, C, H, W)`` in ``[0, 1]`` to the run's ``predict`` frames
after them, closed loop. A ``.pt2`` keeps the fused ops (load it after ``import deeprnn_cuda``); the ONNX graph
is standard operators only (the fused ops decompose into the reference layers' convolutions and elementwise
ops, :mod:`deeprnn_cuda._decompositions`), unrolled over the observed and predicted frames.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from ..models.patch_predictor import PatchRecurrentPredictor
from .predict import frame_shape, load_run

FORMATS = ("onnx", "pt2")


class ClosedLoop(nn.Module):
    """``model(observed, num_future)`` with ``num_future`` fixed, the one-argument form exporters take."""

    def __init__(self, model: PatchRecurrentPredictor, num_future: int) -> None:
        super().__init__()
        self.model, self.num_future = model, num_future

    def forward(self, observed: torch.Tensor) -> torch.Tensor:
        return self.model(observed, self.num_future)


def example_input(config: Dict) -> torch.Tensor:
    """A random ``(1, observe, C, H, W)`` clip shaped like a run's frames."""
    return torch.rand(1, config["observe"], *frame_shape(config), generator=torch.Generator().manual_seed(0))


def export_run(run_dir: Path, fmt: str, out: Path) -> Dict:
    """Export the predictor of ``run_dir`` as ``fmt`` (:data:`FORMATS`) to ``out``, written whole or not at all."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    model, config = load_run(run_dir)
    module, example = ClosedLoop(model, config["predict"]).eval(), example_input(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}", dir=out.parent)
    os.close(fd)
    try:
        if fmt == "pt2":
            torch.export.save(torch.export.export(module, (example,)), tmp)
        else:
            torch.onnx.export(module, (example,), tmp, dynamo=True, input_names=["observed"],
                              output_names=["predicted"], verbose=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"format": fmt, "out": str(out), "input_shape": list(example.shape),
            "output_shape": [1, config["predict"], *example.shape[2:]]}
