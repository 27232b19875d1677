"""Bad input to cbm_layer: a ValueError or TypeError that names the argument, never a crash."""
import pytest
import torch

from deeprnn_cuda import cbm_layer


def good(**over):
    args = dict(
        x=torch.randn(3, 2, 4, 5, 6),
        weight_r=torch.randn(7, 4, 3, 3),
        bias_r=torch.randn(7),
        weight_t=torch.randn(7, 11, 3, 3),
        bias_t=torch.randn(7),
        c0=torch.randn(2, 7, 5, 6),
    )
    args.update(over)
    return args


CASES = [
    (dict(x=torch.randn(2, 4, 5, 6)), ValueError, r"x must have shape \(T, B, C_in, H, W\)"),
    (dict(x=torch.randint(0, 3, (3, 2, 4, 5, 6))), ValueError, "x must be a floating point"),
    (dict(x=[1, 2]), TypeError, "x must be a torch.Tensor"),
    (dict(weight_r=torch.randn(7, 3, 3, 3)), ValueError, r"weight_r must have shape \(C, C_in=4"),
    (dict(weight_r=torch.randn(7, 4, 3)), ValueError, "weight_r must have shape"),
    (dict(weight_r=torch.randn(7, 4, 2, 2)), ValueError, "weight_r must have a square odd kernel"),
    (dict(weight_r=torch.randn(7, 4, 3, 5)), ValueError, "weight_r must have a square odd kernel"),
    (dict(weight_t=torch.randn(7, 10, 3, 3)), ValueError, r"weight_t must have shape \(C=7, C_in \+ C=11"),
    (dict(weight_t=torch.randn(6, 11, 3, 3)), ValueError, "weight_t must have shape"),
    (dict(weight_t=torch.randn(7, 11, 4, 4)), ValueError, "weight_t must have a square odd kernel"),
    (dict(bias_r=torch.randn(6)), ValueError, r"bias_r must have shape \(C=7,\)"),
    (dict(bias_t=torch.randn(7, 1)), ValueError, "bias_t must have shape"),
    (dict(c0=torch.randn(2, 7, 5)), ValueError, r"c0 must have shape \(B=2, C=7, H=5, W=6\)"),
    (dict(c0=torch.randn(1, 7, 5, 6)), ValueError, "c0 must have shape"),
    (dict(c0=torch.randn(2, 7, 5, 6, dtype=torch.float64)), ValueError, "c0 must have x's dtype"),
    (dict(weight_t=torch.randn(7, 11, 3, 3, dtype=torch.float64)), ValueError, "weight_t must have x's dtype"),
    (dict(bias_r=torch.randn(7, dtype=torch.float64)), ValueError, "bias_r must have x's dtype"),
    (dict(td_mask=torch.ones(3)), ValueError, "td_mask must have dtype torch.bool"),
    (dict(td_mask=torch.ones(4, dtype=torch.bool)), ValueError, r"td_mask must have shape \(T=3,\)"),
    (dict(td_mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, r"\(T=3, B=2\)"),
    (dict(td_mask=[True, False, True]), TypeError, "td_mask must be a bool tensor"),
    (dict(act_r="sigmoid"), ValueError, "act_r must be one of"),
    (dict(act_t="tanh"), ValueError, "act_t must be one of"),
    (dict(merge="concat"), ValueError, "merge must be one of"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("over,exc,match", CASES)
def test_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        cbm_layer(**good(**over))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mixed_devices():
    with pytest.raises(ValueError, match="must be on x's device"):
        cbm_layer(**good(c0=torch.randn(2, 7, 5, 6, device="cuda")))


def test_mixed_devices_meta():
    with pytest.raises(ValueError, match="weight_r must be on x's device"):
        cbm_layer(**good(weight_r=torch.randn(7, 4, 3, 3, device="meta")))


def test_unavailable_backend_says_how_to_build(monkeypatch):
    from deeprnn_cuda import _native

    monkeypatch.setattr(_native, "_IMPORT_ERROR", ImportError("no _C"))
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        cbm_layer(**good(), backend="native")


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    from deeprnn_cuda import _native, backends

    monkeypatch.setattr(_native, "_IMPORT_ERROR", ImportError("no _C"))
    monkeypatch.setattr(backends, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="reference"):
        cbm_layer(**good(), backend="auto")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cbm_layer(**good(), backend="auto")
