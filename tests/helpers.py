"""Comparison helpers for tests: DESIGN.md section 5 tolerances."""
import torch

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ||got - ref|| / ||ref|| in float64 (DESIGN.md section 5); NaN never passes."""
    got, ref = got.detach().double(), ref.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    denom = ref.norm().item()
    return (got - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Assert the DESIGN.md relative tolerance for ``dtype`` holds."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = rel_err(got, ref)
    assert err <= TOLERANCES[dtype], f"{what}: relative error {err:.3e} > {TOLERANCES[dtype]:.0e} ({dtype})"
