"""Comparison helpers for tests: docs/design.md section 5 tolerances."""
import contextlib
from typing import Iterator, Optional

import torch

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||got - ref|| / ||ref|| in float64 (docs/design.md section 5); NaN never passes."""
    got, ref = got.detach().double(), ref.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    denom = ref.norm().item()
    return (got - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Assert the docs/design.md relative tolerance for ``dtype`` holds."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = rel_err(got, ref)
    assert err <= TOLERANCES[dtype], f"{what}: relative error {err:.3e} > {TOLERANCES[dtype]:.0e} ({dtype})"


def make_inputs(T, B, C_in, C, H, W, k_r=3, k_t=3, dtype=torch.float64, bias=True, seed=0, device="cpu"):
    """Random cbm_layer inputs requiring grad, drawn in float64 on the CPU (the same values for every dtype
    and device), scaled like a Xavier init so activations stay in their interesting range; never zeros."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype).requires_grad_()

    fan_t = (C_in + C) * k_t * k_t
    return dict(
        x=rnd(T, B, C_in, H, W),
        weight_r=rnd(C, C_in, k_r, k_r, scale=(C_in * k_r * k_r) ** -0.5),
        bias_r=rnd(C, scale=0.1) if bias else None,
        weight_t=rnd(C, C_in + C, k_t, k_t, scale=fan_t ** -0.5),
        bias_t=rnd(C, scale=0.1) if bias else None,
        c0=rnd(B, C, H, W, scale=0.5),
    )


@contextlib.contextmanager
def cpu_conv_chunk_elements(elements: Optional[int]) -> Iterator[None]:
    """Run the native CPU driver with ``StepKernels::conv_chunk_elements = elements`` (default 2^18; <= 0: one
    chunk; None: leave it as it is), so tiny shapes reach its chunk branches; the previous value is restored on
    exit."""
    if elements is None:
        yield
        return
    previous = torch.ops.deeprnn._set_cpu_conv_chunk_elements(elements)
    try:
        yield
    finally:
        torch.ops.deeprnn._set_cpu_conv_chunk_elements(previous)


@contextlib.contextmanager
def cuda_emulation() -> Iterator[None]:
    """Run the native CPU ops with the CUDA step tables (their configuration: one projection chunk, the whole-sequence
    hooks; their host decisions) and the CUDA kernels' bodies on a host executor (csrc/cpu/cuda_emulation.h); the
    previous setting is restored on exit."""
    previous = torch.ops.deeprnn._set_cpu_emulates_cuda(True)
    try:
        yield
    finally:
        torch.ops.deeprnn._set_cpu_emulates_cuda(previous)


def count_ops(fn, name: str) -> int:
    """How many times the aten op ``name`` ran inside ``fn()`` (from the profiler's trace)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == name)


@contextlib.contextmanager
def fresh_autotune() -> Iterator[None]:
    """Autotuning on around an empty cache; afterwards the cache is emptied and the setting restored."""
    from deeprnn_cuda import autotune

    old = autotune.enabled()
    autotune.set_enabled(True)
    autotune.clear_cache()
    try:
        yield
    finally:
        autotune.clear_cache()
        autotune.set_enabled(old)
