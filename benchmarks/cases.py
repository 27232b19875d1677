"""Benchmark cases shared by the pytest-benchmark suite and the table runner.

:func:`contenders`: each computes the same single CBM layer (R = tanh, as in the authors' code, T = sigmoid,
merge mul) from the same weights: the authors' per-step eager formulation (our transcription of their ``RBM``),
the ``reference`` backend and the compiled ``native`` backend.

:func:`cell_contenders`: for every cell (CBM, ConvLSTM, ConvGRU), the usual per-step ``nn.Conv2d`` loop (for
CBM the authors' RBM, for ConvLSTM ndrplz/ConvLSTM_pytorch's cell loop) against the ``native`` module with the
same weights; train step (forward + backward) or inference (``torch.no_grad()``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

import torch.nn as nn

from deeprnn_cuda import CBM, ConvGRU, ConvLSTM, _native
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


BENCH_CELLS = ("cbm", "convlstm", "convgru")
LOOP = "per-step nn.Conv2d loop"


class ConvLSTMLoop(nn.Module):
    """ndrplz/ConvLSTM_pytorch's formulation: per step one ``nn.Conv2d`` over ``cat([x_t, h])``, gates i, f, o, g."""

    def __init__(self, C_in: int, C: int, k: int) -> None:
        super().__init__()
        self.C = C
        self.conv = nn.Conv2d(C_in + C, 4 * C, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[1], self.C, *x.shape[3:])
        hs = []
        for t in range(x.shape[0]):
            i, f, o, g = torch.split(self.conv(torch.cat([x[t], h], 1)), self.C, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        return torch.stack(hs)


class ConvGRULoop(nn.Module):
    """The common ConvGRU formulation: per step ``nn.Conv2d`` on x_t, on h (z, r) and on r * h (n)."""

    def __init__(self, C_in: int, C: int, k: int) -> None:
        super().__init__()
        self.C = C
        self.conv_x = nn.Conv2d(C_in, 3 * C, k, padding=k // 2)
        self.conv_hzr = nn.Conv2d(C, 2 * C, k, padding=k // 2)
        self.conv_hn = nn.Conv2d(C, C, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[1], self.C, *x.shape[3:])
        hs = []
        for t in range(x.shape[0]):
            a_z, a_r, a_n = torch.split(self.conv_x(x[t]), self.C, dim=1)
            u_z, u_r = torch.split(self.conv_hzr(h), self.C, dim=1)
            z, r = torch.sigmoid(a_z + u_z), torch.sigmoid(a_r + u_r)
            n = torch.tanh(a_n + self.conv_hn(r * h))
            h = (1 - z) * n + z * h
            hs.append(h)
        return torch.stack(hs)


def loop_module(cell: str, shape: Shape) -> nn.Module:
    """The per-step ``nn.Conv2d`` loop of ``cell`` (the CBM one, the authors' RBM, is batch-first)."""
    if cell == "cbm":
        return AuthorsRBM(shape.C_in, shape.C, shape.k, num_layers=1)
    return (ConvLSTMLoop if cell == "convlstm" else ConvGRULoop)(shape.C_in, shape.C, shape.k)


def native_twin(cell: str, loop: nn.Module, shape: Shape, backend: str = "native") -> nn.Module:
    """The module (on ``backend``) computing what ``loop`` computes, with its weights."""
    if cell == "cbm":
        return CBM.from_authors_state_dict(loop.state_dict(), backend=backend)
    dtype = next(loop.parameters()).dtype
    if cell == "convlstm":
        model = ConvLSTM(shape.C_in, shape.C, shape.k, backend=backend).to(dtype=dtype)
        model.layers[0].load_state_dict(loop.conv.state_dict())
        return model
    model = ConvGRU(shape.C_in, shape.C, shape.k, backend=backend).to(dtype=dtype)
    p = model.layers[0]
    with torch.no_grad():
        p.weight_x.copy_(loop.conv_x.weight)
        p.bias_x.copy_(loop.conv_x.bias)
        p.weight_h.copy_(torch.cat([loop.conv_hzr.weight, loop.conv_hn.weight]))
        p.bias_h.copy_(torch.cat([loop.conv_hzr.bias, loop.conv_hn.bias]))
    return model


def cell_contenders(cell: str, shape: Shape, dtype: torch.dtype = torch.float32, device: str = "cpu",
                    with_reference: bool = False) -> Dict[str, Callable]:
    """Name -> (train: bool) -> callable: one forward (inference under no_grad) or forward + backward of one
    ``cell`` layer, the per-step loop and (when built for the device and dtype) the native module; with
    ``with_reference`` also the module on the ``reference`` backend (the memory table's yardstick)."""
    torch.manual_seed(0)
    loop = loop_module(cell, shape).to(device=device, dtype=dtype)
    x_tbc = torch.randn(shape.T, shape.B, shape.C_in, shape.H, shape.W, device=device, dtype=dtype)
    x_loop = x_tbc.transpose(0, 1).contiguous() if cell == "cbm" else x_tbc  # the RBM is batch-first

    def runner(model: nn.Module, x: torch.Tensor) -> Callable[[bool], None]:
        def run(train: bool) -> None:
            x.requires_grad_(train)
            with torch.set_grad_enabled(train):
                out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                if train:
                    out.float().sum().backward()

        return run

    fns = {LOOP: runner(loop, x_loop)}
    if with_reference:
        fns["reference"] = runner(native_twin(cell, loop, shape, backend="reference"), x_tbc)
    if _native.is_available() and _native.supports(x_tbc):
        fns["native"] = runner(native_twin(cell, loop, shape), x_tbc)
    return fns
