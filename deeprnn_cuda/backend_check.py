"""Run one deep CBM stack with every backend available here and report agreement and speed.

``deeprnn demo`` prints this before it trains, so a user sees at once which backends work on their machine,
that they agree with the reference, and what each costs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import torch

from .backends import available_backends
from .modules import CBM


@dataclass
class BackendReport:
    """One backend's run of the same model on the same batch."""

    backend: str
    seconds: float  # median forward+backward time
    max_rel_error: float  # worst relative error of output and gradients against the reference backend

    def line(self, reference_seconds: float) -> str:
        return (f"{self.backend:>10}: fwd+bwd {self.seconds * 1e3:8.1f} ms  ({reference_seconds / self.seconds:4.1f}x "
                f"reference)  max rel. error vs reference {self.max_rel_error:.1e}")


def compare_backends(layers: int = 15, channels: int = 8, frames: int = 8, batch: int = 4, size: int = 16,
                     repeats: int = 3, device: str = "cpu", seed: int = 0) -> List[BackendReport]:
    """Forward+backward of a ``layers``-deep CBM (shortcuts every 2) on random video, once per backend."""
    torch.manual_seed(seed)
    x = torch.randn(frames, batch, channels, size, size, device=device)
    model = CBM(channels, channels, num_layers=layers, shortcut_every=2).to(device)
    reports, reference = [], None
    for backend in available_backends(x):
        model.backend = backend
        times = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out, _ = model(x)
            out.square().mean().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results = [out.detach()] + [p.grad.detach().clone() for p in model.parameters()]
        if reference is None:
            reference = results
        err = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(results, reference))
        reports.append(BackendReport(backend, sorted(times)[len(times) // 2], err))
    return reports
