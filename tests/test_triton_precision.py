"""The float32 precision rule (issue 23): convolutions use TF32 exactly when ``torch.backends.cudnn.allow_tf32``
is True, on every backend (native through cuDNN, Triton through ``tl.dot``'s input precision), so a result does
not depend on which backend ``auto`` picks; ``torch.backends.cuda.matmul.allow_tf32`` plays no part."""
from __future__ import annotations

from typing import Dict, Set

import pytest
import torch

pytest.importorskip("triton")
from deeprnn_cuda import autotune  # noqa: E402
from deeprnn_cuda import triton as tb  # noqa: E402
from deeprnn_cuda.triton import cell_kernels, kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not tb.is_available(), reason=tb.unavailable_reason() or "no Triton backend")

FLAGS = [(False, False), (False, True), (True, False), (True, True)]  # (cudnn.allow_tf32, cuda.matmul.allow_tf32)


def _set_flags(monkeypatch, cudnn: bool, matmul: bool) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", cudnn)
    # monkeypatch cannot undo this one (cuBLASModule has no attribute to restore); conftest's _no_tf32 resets it
    torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize("cudnn,matmul", FLAGS)
def test_dot_precision_follows_the_cudnn_flag(cudnn, matmul, monkeypatch):
    _set_flags(monkeypatch, cudnn, matmul)
    assert kernels.dot_precision(torch.zeros(1)) == ("tf32" if cudnn else "ieee")
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # TF32 is a float32 matter only
        assert kernels.dot_precision(torch.zeros(1, dtype=dtype)) == "ieee"


def _record_launches(monkeypatch) -> Dict[str, Set[str]]:
    """Replace every launcher by one that runs nothing and logs the ``PREC`` it was given, by launcher name."""
    seen: Dict[str, Set[str]] = {}

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.setdefault(self.name, set()).add(kwargs["PREC"])

    for name in ("fwd_step", "bwd_step", "fwd_seq", "bwd_seq"):
        monkeypatch.setattr(kernels.LAUNCHERS, name, Recorder("cbm_" + name))
    for name in cell_kernels.CellLaunchers.NAMES:
        monkeypatch.setattr(cell_kernels.LAUNCHERS, name, Recorder(name))
    return seen


@pytest.fixture(params=["single", "multi"])
def mode(request):
    old = kernels.set_mode(request.param)
    yield request.param
    kernels.set_mode(old)


@pytest.mark.parametrize("cudnn,matmul", [(False, True), (True, False)])
def test_every_launch_takes_the_rule(mode, cudnn, matmul, monkeypatch):
    seen = _record_launches(monkeypatch)
    _set_flags(monkeypatch, cudnn, matmul)
    T, B, C_in, C, H, W, k = 2, 2, 3, 4, 5, 6, 3

    def param(*shape):
        return torch.randn(*shape, requires_grad=True)

    x = param(T, B, C_in, H, W)
    o, c = tb.cbm_layer_triton(x, param(C, C_in, k, k), param(C), param(C, C_in + C, k, k), param(C),
                               param(B, C, H, W))
    (o.sum() + c.sum()).backward()
    h, c = tb.convlstm_layer_triton(x, param(4 * C, C_in + C, k, k), param(4 * C), param(B, C, H, W),
                                    param(B, C, H, W))
    (h.sum() + c.sum()).backward()
    tb.convgru_layer_triton(x, param(3 * C, C_in, k, k), param(3 * C), param(3 * C, C, k, k), param(3 * C),
                            param(B, C, H, W)).sum().backward()
    kind = "step" if mode == "single" else "seq"
    launchers = [f"cbm_fwd_{kind}", f"cbm_bwd_{kind}"] + [f"{cell}_{kind}" for cell in (
        "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd")]
    assert seen == {name: {"tf32" if cudnn else "ieee"} for name in launchers}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autotune_keys_on_the_flag_the_precision_follows(dtype, monkeypatch):
    """Two flag settings share a cached choice exactly when every backend computes the same way under both."""
    x = torch.zeros(1, dtype=dtype)
    keys, precisions = {}, {}
    for cudnn, matmul in FLAGS:
        _set_flags(monkeypatch, cudnn, matmul)
        keys[cudnn, matmul] = autotune._tf32_flags(x)
        cudnn_uses_tf32 = cudnn and dtype == torch.float32  # the native backend's convolutions
        precisions[cudnn, matmul] = (kernels.dot_precision(x), cudnn_uses_tf32)
    for a in FLAGS:
        for b in FLAGS:
            assert (keys[a] == keys[b]) == (precisions[a] == precisions[b]), (a, b)
