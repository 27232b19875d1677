"""Triton backend (issue 4): placeholder until the kernels land."""
from __future__ import annotations

import torch


def is_available() -> bool:
    return False


def unavailable_reason() -> str:
    return "the Triton kernels are not implemented yet"


def triton_version() -> str:
    return ""


def supports(x: torch.Tensor) -> bool:
    return False


def cbm_layer_triton(*args, **kwargs):
    raise RuntimeError("backend='triton' is not available: " + unavailable_reason())
