"""The layout rule of the native ops: whatever the layout of their inputs (a batch_first x seen through a transpose,
channels_last states, channels_last or permuted weights, strided biases), every output is contiguous, as the fake
kernels say, so torch.compile's graphs and the real kernels agree.

oneDNN and cuDNN return channels_last gradients for a channels_last weight; the driver makes every weight
contiguous first (csrc/recurrence.h: contiguous_weight). Checked per op against its fake kernel (run on fake copies
of the same inputs, strides kept), in float32 and float64, in the CPU tables' and the CUDA tables' configuration
(tests/test_cuda_emulation.py), and through torch.compile(fullgraph=True) forward and backward.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from cell_helpers import make_cell_inputs
from deeprnn_cuda import _native, cbm_layer, convgru_layer, convlstm_layer
from helpers import assert_close_rel, cuda_emulation, make_inputs

pytestmark = pytest.mark.skipif(not _native.is_available(), reason="native extension not built")


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """The same values seen through a (B, T) transpose, as batch_first input arrives."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _permuted(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)


def _strided(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t, t], 1)[:, 0]


#: layout -> what it does to each kind of input (x: 5-D, weight: 4-D parameter, state: h0/c0, bias: 1-D).
LAYOUTS: Dict[str, Dict[str, Callable]] = {
    "transposed-x": {"x": _transposed},
    "channels-last-states": {"state": lambda t: t.contiguous(memory_format=torch.channels_last)},
    "channels-last-weights": {"weight": lambda t: t.contiguous(memory_format=torch.channels_last)},
    "permuted-weights": {"weight": _permuted},
    "strided-biases": {"bias": _strided},
}
LAYOUTS["all"] = {**LAYOUTS["transposed-x"], **LAYOUTS["channels-last-states"], **LAYOUTS["channels-last-weights"],
                  **LAYOUTS["strided-biases"]}


def _kind(name: str, t: torch.Tensor) -> str:
    if name == "x":
        return "x"
    if name in ("h0", "c0"):
        return "state"
    return "bias" if t.dim() == 1 else "weight"


def _inputs(cell: str, dtype: torch.dtype, layout: str, device: str = "cpu") -> Dict[str, torch.Tensor]:
    # C = 4, 5x6 images: channels_last strides differ from contiguous ones in every dimension.
    make = make_inputs if cell == "cbm" else lambda *a, **k: make_cell_inputs(cell, *a, **k)
    a = {k: (v.detach() if v is not None else None)
         for k, v in make(3, 2, 3, 4, 5, 6, dtype=dtype, seed=11, device=device).items()}
    changes = LAYOUTS[layout]
    out = {}
    for name, t in a.items():
        change = changes.get(_kind(name, t)) if t is not None else None
        out[name] = change(t) if change else t
        if change:
            assert out[name].stride() != t.stride(), f"{layout} left {name} contiguous"
    return out


def _grads_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t) if isinstance(t, FakeTensor) else torch.randn_like(t)


def _ops_cbm(ops, a) -> List[torch.Tensor]:
    args = (a["x"], a["weight_r"], a["bias_r"], a["weight_t"], a["bias_t"], a["c0"])
    td = torch.tensor([True, False, True], device=a["x"].device)
    o, c, r = ops.cbm_forward(*args, td, 1, 0, 0)
    grad_o = _grads_like(o)
    grads = ops.cbm_backward(grad_o, _transposed(grad_o), a["x"], a["weight_r"], a["weight_t"], a["c0"], r, c, td,
                             1, 0, 0)
    return [o, c, r, *grads, *ops.cbm_inference(*args, 1, 0, 0, True), *ops.cbm_inference(*args, 1, 0, 0, False)]


def _ops_convlstm(ops, a) -> List[torch.Tensor]:
    args = (a["x"], a["weight"], a["bias"], a["h0"], a["c0"])
    h, c, gates = ops.convlstm_forward(*args)
    grads = ops.convlstm_backward(_grads_like(h), _transposed(_grads_like(c)), a["x"], a["weight"], a["h0"], a["c0"],
                                  h, c, gates)
    return [h, c, gates, *grads, *ops.convlstm_inference(*args, True), *ops.convlstm_inference(*args, False)]


def _ops_convgru(ops, a) -> List[torch.Tensor]:
    args = (a["x"], a["weight_x"], a["bias_x"], a["weight_h"], a["bias_h"], a["h0"])
    h, gates = ops.convgru_forward(*args)
    grads = ops.convgru_backward(_grads_like(h), a["x"], a["weight_x"], a["weight_h"], a["h0"], h, gates)
    return [h, gates, *grads, ops.convgru_inference(*args)]


OPS = {"cbm": _ops_cbm, "convlstm": _ops_convlstm, "convgru": _ops_convgru}
#: where the ops run: (device, context). "cuda" is the GPU's own check (scripts/gpu_session.sh runs it first).
DRIVERS = {"cpu": ("cpu", contextlib.nullcontext), "cuda-emulated": ("cpu", cuda_emulation),
           "cuda": ("cuda", contextlib.nullcontext)}
_NO_GPU = not (torch.cuda.is_available() and _native.is_available() and _native.cuda_compiled())
DRIVER_PARAMS = [pytest.param(d, id=d, marks=[pytest.mark.cuda, pytest.mark.skipif(_NO_GPU, reason="needs a CUDA GPU "
                                                                                     "and the CUDA kernels")]
                              if d == "cuda" else []) for d in DRIVERS]


@pytest.mark.parametrize("driver", DRIVER_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cell", list(OPS))
def test_real_outputs_are_what_the_fake_kernels_say(cell, layout, dtype, driver):
    """Every output of every op (forward, backward, inference with and without all states) against its fake. On a GPU
    this is also the check that the CUDA inference returns the final state alone without all_states."""
    device, context = DRIVERS[driver]
    a = _inputs(cell, dtype, layout, device)
    with context():
        real = OPS[cell](torch.ops.deeprnn, a)
    with FakeTensorMode() as mode:
        fake = OPS[cell](torch.ops.deeprnn, {k: (mode.from_tensor(v) if v is not None else None) for k, v in a.items()})
    assert len(real) == len(fake)
    for i, (r, f) in enumerate(zip(real, fake)):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), f"{cell} output {i}"


def _opcheck_calls(cell: str, a) -> List[tuple]:
    """(op, arguments) of each forward op (inputs requiring grad: its autograd, hence the backward op, is checked too)
    and each inference op (inputs detached: it has no autograd, by design)."""
    ops = torch.ops.deeprnn
    plain = {k: (v.detach() if v is not None else None) for k, v in a.items()}
    if cell == "cbm":
        names = ("x", "weight_r", "bias_r", "weight_t", "bias_t", "c0")
        return [(ops.cbm_forward.default, tuple(a[k] for k in names) + (None, 1, 0, 0)),
                (ops.cbm_inference.default, tuple(plain[k] for k in names) + (1, 0, 0, False))]
    if cell == "convlstm":
        names = ("x", "weight", "bias", "h0", "c0")
        return [(ops.convlstm_forward.default, tuple(a[k] for k in names)),
                (ops.convlstm_inference.default, tuple(plain[k] for k in names) + (False,))]
    names = ("x", "weight_x", "bias_x", "weight_h", "bias_h", "h0")
    return [(ops.convgru_forward.default, tuple(a[k] for k in names)),
            (ops.convgru_inference.default, tuple(plain[k] for k in names))]


@pytest.mark.parametrize("driver", DRIVER_PARAMS)
@pytest.mark.parametrize("cell", list(OPS))
def test_opcheck_with_channels_last_weights(cell, driver):
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOT dispatch) of every op with every layout
    change at once, channels_last weights included; backward through the registered autograd."""
    device, context = DRIVERS[driver]
    a = _inputs(cell, torch.float64, "all", device)
    for t in a.values():
        if t is not None and t.dim() > 1:
            t.requires_grad_()
    with context():
        for op, args in _opcheck_calls(cell, a):
            torch.library.opcheck(op, args)


LAYERS = {"cbm": cbm_layer, "convlstm": convlstm_layer, "convgru": convgru_layer}


@pytest.mark.parametrize("cell", list(LAYERS))
def test_torch_compile_with_channels_last_weights(cell):
    """torch.compile(fullgraph=True) (inductor, which asserts the fake kernels' strides on the real outputs) of each
    native layer with every layout change at once, forward and backward, against the eager reference."""
    import torch._dynamo

    a = {k: (v.requires_grad_() if v is not None else None) for k, v in _inputs(cell, torch.float32, "all").items()}
    ref_a = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in a.items()}
    layer = LAYERS[cell]

    def loss(inputs, backend, fn=layer):
        out = fn(**inputs, backend=backend)
        outs = out if isinstance(out, tuple) else (out,)
        return sum((o.double() * (i + 1)).sin().sum() for i, o in enumerate(outs))

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    leaves = [v for v in a.values() if v is not None]
    got = torch.autograd.grad(loss(a, "native", compiled), leaves)
    want = torch.autograd.grad(loss(ref_a, "reference"), [v for v in ref_a.values() if v is not None])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.is_contiguous(), f"{cell} gradient {i} is not contiguous"
        assert_close_rel(g.double(), w, torch.float32, f"{cell} gradient {i}")
