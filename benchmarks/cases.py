"""Benchmark cases shared by the pytest-benchmark suite and the table runner.

Each contender computes the same single CBM layer (R = tanh, as in the authors' code, T = sigmoid, merge
mul) from the same weights: the authors' per-step eager formulation (our transcription of their ``RBM``),
the ``reference`` backend and the compiled ``native`` backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from deeprnn_cuda import CBM, _native
from deeprnn_cuda.authors import AuthorsRBM


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    C_in: int
    C: int
    H: int
    W: int
    k: int = 3

    def __str__(self) -> str:
        return f"T={self.T} B={self.B} C_in={self.C_in} C={self.C} {self.H}x{self.W} k={self.k}"


CPU_SHAPES = [Shape(32, 2, 16, 16, 16, 16), Shape(16, 4, 32, 32, 28, 28)]


def contenders(shape: Shape, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Dict[str, Callable]:
    """Name -> (train: bool) -> callable running one forward (and backward when train) pass."""
    torch.manual_seed(0)
    authors = AuthorsRBM(shape.C_in, shape.C, shape.k, num_layers=1).to(device=device, dtype=dtype)
    x_btc = torch.randn(shape.B, shape.T, shape.C_in, shape.H, shape.W, device=device, dtype=dtype)
    x_tbc = x_btc.transpose(0, 1).contiguous()

    def run_authors(train: bool) -> None:
        x = x_btc.requires_grad_(train)
        with torch.set_grad_enabled(train):
            out, _ = authors(x)
            if train:
                out.sum().backward()

    fns = {"authors (per-step eager)": run_authors}
    backends = ["reference"] + (["native"] if _native.is_available() and _native.supports(x_tbc) else [])
    for backend in backends:
        model = CBM.from_authors_state_dict(authors.state_dict(), backend=backend)

        def run(train: bool, model=model) -> None:
            x = x_tbc.requires_grad_(train)
            with torch.set_grad_enabled(train):
                out, _ = model(x)
                if train:
                    out.sum().backward()

        fns[backend] = run
    return fns
