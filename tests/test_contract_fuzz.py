"""Property-based tests of the op contract (hypothesis) of all three cells, CBM, ConvLSTM and ConvGRU, on every
backend this machine has.

Random sizes (0 and 1 included, kernels larger than the image), every act/merge/Temporal Dropout option (CBM),
initial states and biases given or not, every dtype a backend takes, contiguous, non-contiguous, channels_last
and expanded (stride 0) tensors, and now and then one mistake (a wrong rank, channel count, kernel, dtype or
device); besides, every kind of mistake in every argument it applies to. Each call must either match the
float64 reference (values and gradients, docs/design.md section 5 tolerances) or raise a ``ValueError`` that names
the argument; an empty sequence, batch or image gives empty outputs and zero gradients; the process never dies.
The compiled ops are also called directly (``torch.ops.deeprnn*``: forward, backward and, for ConvLSTM/ConvGRU,
inference ops; bad arguments must be a ValueError, not a crash) and through ``torch.compile``.

The examples are bounded and derandomized: the same ones run every time (``DEEPRNN_FUZZ_SCALE=10`` runs ten
times as many). Each test prints how many examples ran for its cell on its backend and how they ended (a
reference match, an empty result, a ValueError; ``DEEPRNN_FUZZ_DETAIL=1``: which mistake, in which argument).
OPS is the extension point: one :class:`OpSpec` per cell. The CUDA entries are written for a GPU and skipped
without one; they have never run.

Defects this fuzz found in the ConvLSTM/ConvGRU ops, fixed and kept fixed by the last three tests: zero input
channels were taken (a RuntimeError natively, a crash of the process in the Triton kernels), the native ops'
fake kernels and the Triton ops validated nothing (a direct call read out of bounds or returned garbage).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from deeprnn_cuda import _native, cbm_layer, convgru_layer, convgru_layer_ref, convlstm_layer, convlstm_layer_ref
from deeprnn_cuda import triton as triton_backend
from deeprnn_cuda._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES
from deeprnn_cuda.reference import cbm_layer_ref
from helpers import TOLERANCES, assert_close_rel, cpu_conv_chunk_elements, cuda_emulation, rel_err

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("DEEPRNN_FUZZ_SCALE", "1"))
DETAIL = os.environ.get("DEEPRNN_FUZZ_DETAIL", "") == "1"  # report each mistake's kind and argument
RAN: Dict[Tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(examples: int) -> settings:
    """Bounded, reproducible runs: the same examples every time, no example database, no deadline (CI is slow)."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: slow here, and the example is small
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)


def _report(capsys, test: str, backend: "Backend", spec: "OpSpec", unit: str = "examples") -> None:
    """Print, past pytest's capture, how many examples (or calls) this test ran for ``spec`` on ``backend`` and
    how they ended (and forget them: the next cell's test records under the same key)."""
    outcomes = RAN.pop((test, backend.label), collections.Counter())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    with capsys.disabled():
        print(f"\ncontract fuzz {test}[{spec.name}-{backend.label}]: {sum(outcomes.values())} "
              f"{unit} ({detail})")


# ---------------------------------------------------------------------------------------------------------------
# Drawing a call.

LAYOUTS = ("contiguous", "strided", "channels_last", "expanded")
KINDS_OF_MISTAKE = ("rank", "dtype", "device", "channels", "kernel", "integer_x")


def size(hi: int) -> st.SearchStrategy[int]:
    """1..hi, or 0 now and then. Hypothesis favours the first entry of a list and the low end of a range, so the
    common cases come first and the rare ones last: zeros are covered without drowning the full comparisons."""
    return st.sampled_from([*range(1, hi + 1), *range(1, hi + 1), 0])


def rarely() -> st.SearchStrategy[bool]:
    """True about one time in five (the rare branch: a mistake, a bad option code)."""
    return st.sampled_from([False, False, False, False, True])


@dataclass
class Call:
    """One drawn call: named tensor arguments (None where absent), options, and at most one mistake."""

    sizes: Dict[str, int]
    tensors: Dict[str, Optional[torch.Tensor]]
    options: Dict[str, object]
    dtype: torch.dtype
    mistake: Optional[Tuple[str, str]] = None  # (kind, argument) once applied
    codes: Optional[Tuple[int, int, int]] = None  # direct op calls: option codes overriding ``options``
    grad_inputs: List[str] = field(default_factory=list)  # the float tensors gradients are taken for
    # Where a "channels" mistake adds a slice (argument -> dim) and which arguments a "kernel" mistake pads (CBM's
    # unless the cell's draw says otherwise).
    channel_dims: Dict[str, int] = field(default_factory=lambda: dict(CBM_CHANNEL_DIMS))
    kernel_args: Tuple[str, ...] = ("weight_r", "weight_t")
    picker: Optional["Picker"] = None  # where the call's later choices come from (None: hypothesis, as CBM's)
    spares: Dict[str, torch.Tensor] = field(default_factory=dict)  # valid values of the absent optional tensors


def _values(shape, gen: torch.Generator, scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _lay_out(values: torch.Tensor, layout: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``values`` (float64) in ``dtype`` on ``device`` with the given memory layout, requiring grad."""
    shape = tuple(values.shape)
    if layout == "expanded" and len(shape) > 1 and shape[0] > 1:
        base = values[:1].to(device, dtype).requires_grad_()
        return base.expand(shape)  # stride 0 along dim 0: every slice shares the first one's values
    if layout == "strided" and shape and shape[-1] > 0:
        t = torch.empty(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
        return t.copy_(values).requires_grad_()
    t = values.to(device, dtype)
    if layout == "channels_last" and len(shape) in (4, 5):
        t = t.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return t.requires_grad_()


def _other_device(device: str) -> str:
    return "cpu" if device != "cpu" else "meta"


#: CBM's c0 entry is its dim 2 (H), not its channels: still a shape the op must refuse, naming c0.
CBM_CHANNEL_DIMS = {"weight_r": 1, "weight_t": 1, "bias_r": 0, "bias_t": 0, "c0": 2}


def _apply_mistake(call: Call, kind: str, name: str, device: str) -> Optional[Tuple[str, str]]:
    """Spoil one argument; return ``(kind, argument the ValueError must name)`` or None if it does not apply."""
    t = call.tensors.get(name)
    if t is None:
        return None
    t = t.detach()
    other = torch.float32 if call.dtype == torch.float64 else torch.float64
    if kind == "rank":
        spoiled = t[None, None] if name == "td_mask" else t[None]  # td (T,) -> (1, 1, T): never a valid shape
    elif kind == "dtype" and name != "x":  # x defines the dtype the others are held to
        spoiled = t.float() if name == "td_mask" else t.to(other)
    elif kind == "device" and name != "x":
        spoiled = t.to(_other_device(device))
    elif kind == "channels" and name in call.channel_dims:
        dim = call.channel_dims[name]
        spoiled = torch.cat([t, t.narrow(dim, 0, 1)], dim) if t.shape[dim] else t.new_zeros(1)
    elif kind == "kernel" and name in call.kernel_args:
        spoiled = torch.nn.functional.pad(t, (0, 1, 0, 1))  # an even kernel
    elif kind == "integer_x" and name == "x":
        spoiled = t.round().long()
    else:
        return None
    call.tensors[name] = spoiled
    return kind, name


@dataclass(frozen=True)
class OpSpec:
    """What the fuzz needs to know about one op family; a new cell adds one of these to OPS.

    ``layer`` is the public functional op (what ``torch.compile`` traces). ``draw(data, dtypes, device)`` draws a
    valid :class:`Call` (zero sizes allowed). ``run(call, backend, layer=layer)`` calls the public API (or a compiled
    ``layer``) and returns its outputs as a tuple. ``reference(tensors, options)`` is the independent float64
    ground truth on contiguous copies (initial states may be None: zeros). ``expected_error(sizes)`` names the
    argument a ValueError must name for sizes that are refused (zero channels), else None;
    ``direct_expected_error`` the same for the compiled ops called directly (default: ``expected_error``).
    ``output_shape(sizes)`` is every output's shape.

    Direct calls: ``direct_ops`` maps a backend to its ``torch.ops`` namespace (a backend missing there is
    skipped). ``direct(namespace, call)`` calls the forward op, passing ``states(tensors)``
    (each initial state, zeros where the call has none: the ops take no default), and returns its results: the
    ``outputs`` public outputs, then what backward needs, named ``forward_names`` all together.
    ``direct_backward(namespace, call, saved)`` calls the backward op, ``saved`` holding the cotangents named
    ``cotangent_names`` and the forward results; it returns the gradients of ``grad_order`` (a bias the call leaves
    out gets one too, not compared). ``spoilable`` are the backward op's inputs a mistake may be put in;
    ``option_codes`` the integer options of the direct ops (each refused when out of range);
    ``direct_inference(namespace, call)``, where there is an inference op, calls it (returning the outputs).
    """

    name: str
    layer: Callable
    draw: Callable
    run: Callable
    reference: Callable
    expected_error: Callable
    output_shape: Callable
    direct_ops: Dict[str, Callable]
    direct: Callable
    direct_backward: Callable
    outputs: int
    states: Callable  # tensors -> {initial state name: the tensor, or zeros where absent}
    cotangent_names: Tuple[str, ...]
    forward_names: Tuple[str, ...]
    grad_order: Tuple[str, ...]
    spoilable: Tuple[str, ...]
    option_codes: Tuple[str, ...] = ()
    direct_inference: Optional[Callable] = None
    direct_expected_error: Optional[Callable] = None


def draw_cbm(data, dtypes, device: str) -> Call:
    s = dict(T=data.draw(size(3)), B=data.draw(size(2)), C_in=data.draw(size(3)), C=data.draw(size(3)),
             H=data.draw(size(4)), W=data.draw(size(4)))
    k_r, k_t = data.draw(st.sampled_from([3, 1, 5])), data.draw(st.sampled_from([3, 1, 5]))  # 5 > most images
    options = dict(act_r=data.draw(st.sampled_from(list(ACT_R_CODES))), act_t=data.draw(st.sampled_from(list(ACT_T_CODES))),
                   merge=data.draw(st.sampled_from(list(MERGE_CODES))))
    td = data.draw(st.sampled_from([None, "node", "sample"]))
    dtype = data.draw(st.sampled_from(dtypes))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    T, B, C_in, C, H, W = (s[k] for k in ("T", "B", "C_in", "C", "H", "W"))
    shapes = {
        "x": ((T, B, C_in, H, W), 1.0),
        "weight_r": ((C, C_in, k_r, k_r), max(1, C_in * k_r * k_r) ** -0.5),
        "bias_r": ((C,), 0.1),
        "weight_t": ((C, C_in + C, k_t, k_t), max(1, (C_in + C) * k_t * k_t) ** -0.5),
        "bias_t": ((C,), 0.1),
        "c0": ((B, C, H, W), 0.5),
    }
    tensors: Dict[str, Optional[torch.Tensor]] = {}
    for name, (shape, scale) in shapes.items():
        present = name in ("x", "weight_r", "weight_t") or data.draw(st.booleans())
        layout = data.draw(st.sampled_from(LAYOUTS))
        tensors[name] = _lay_out(_values(shape, gen, scale), layout, dtype, device) if present else None
    mask = None
    if td is not None:
        mask = torch.rand((T,) if td == "node" else (T, B), generator=gen) < 0.5
        mask = mask.to(device)
    tensors["td_mask"] = mask
    grad_inputs = [k for k, v in tensors.items() if v is not None and k != "td_mask"]
    return Call(sizes=s, tensors=tensors, options=options, dtype=dtype, grad_inputs=grad_inputs)


def run_cbm(call: Call, backend: str, layer: Callable = cbm_layer) -> Tuple[torch.Tensor, ...]:
    return layer(**call.tensors, **call.options, backend=backend)


def reference_cbm(tensors: Dict[str, Optional[torch.Tensor]], options) -> Tuple[torch.Tensor, ...]:
    x = tensors["x"]
    c0 = tensors["c0"] if tensors["c0"] is not None else x.new_zeros(x.shape[1], tensors["weight_r"].shape[0],
                                                                        *x.shape[-2:])
    return cbm_layer_ref(**{**tensors, "c0": c0}, **options)


def cbm_expected_error(sizes) -> Optional[str]:
    if sizes["C_in"] == 0:
        return "x"
    return "weight_r" if sizes["C"] == 0 else None


def cbm_output_shape(sizes) -> Tuple[int, ...]:
    return tuple(sizes[k] for k in ("T", "B", "C", "H", "W"))


def _codes(options) -> Tuple[int, int, int]:
    return ACT_R_CODES[options["act_r"]], ACT_T_CODES[options["act_t"]], MERGE_CODES[options["merge"]]


def _state(call: Call) -> torch.Tensor:
    """``c0``, or zeros where the call has none (the ops take no default state)."""
    t = call.tensors
    if t["c0"] is not None:
        return t["c0"]
    x, w = t["x"], t["weight_r"]
    return x.new_zeros(x.shape[1], w.shape[0], *x.shape[-2:]) if x.dim() == 5 and w.dim() == 4 else x.new_zeros(())


def direct_cbm(ops, call: Call):
    t = call.tensors
    return ops.cbm_forward(t["x"], t["weight_r"], t["bias_r"], t["weight_t"], t["bias_t"], _state(call),
                           t["td_mask"], *(call.codes or _codes(call.options)))


def direct_cbm_backward(ops, call: Call, saved: Dict[str, torch.Tensor]):
    t = call.tensors
    return ops.cbm_backward(saved["grad_o"], saved["grad_c"], t["x"], t["weight_r"], t["weight_t"], _state(call),
                            saved["r"], saved["c"], t["td_mask"], *_codes(call.options))


def _direct_namespaces() -> Dict[str, Callable]:
    return {"native": lambda: torch.ops.deeprnn, "triton": lambda: torch.ops.deeprnn_triton}


CBM_OP = OpSpec("cbm", cbm_layer, draw_cbm, run_cbm, reference_cbm, cbm_expected_error, cbm_output_shape,
                _direct_namespaces(), direct_cbm, direct_cbm_backward, outputs=2,
                states=lambda t: {"c0": _state(Call({}, t, {}, torch.float64))},
                cotangent_names=("grad_o", "grad_c"), forward_names=("o", "c", "r"),
                grad_order=("x", "weight_r", "bias_r", "weight_t", "bias_t", "c0"),
                spoilable=("grad_o", "grad_c", "r", "c"), option_codes=("act_r", "act_t", "merge"))


# ConvLSTM and ConvGRU (deeprnn_cuda/convlstm.py, convgru.py; ops: csrc/ops.cpp).



class Picker:
    """Every choice of one ConvLSTM / ConvGRU example, uniform and reproducible from one seed hypothesis draws.

    Hypothesis's own ``data.draw(st.sampled_from(...))`` choices cluster: in 150 derandomized examples, a 1-in-5
    branch drawn with ``rarely()`` was taken 9 times, then drawing 3 of the 36 (kind, argument) pairs; CBM's
    native public fuzz draws 11 mistakes, all a device of c0 or a dtype of td_mask. Choices made here are
    uniform: the cells' examples cover every kind of mistake and every argument. A size is 0 one time in
    ZERO_EVERY.
    """

    ZERO_EVERY = 16

    def __init__(self, data) -> None:
        self.rnd = random.Random(data.draw(st.integers(0, 2**32 - 1)))

    def choice(self, options):
        return self.rnd.choice(list(options))

    def size(self, hi: int) -> int:
        return 0 if self.rnd.randrange(self.ZERO_EVERY) == 0 else self.rnd.randint(1, hi)

    def rarely(self) -> bool:
        """True one time in five (as :func:`rarely`)."""
        return self.rnd.randrange(5) == 0

    def seed(self) -> int:
        return self.rnd.randrange(2**31)


def _draw_tensors(pick: Picker, shapes, required, dtype, device):
    """Each of ``shapes`` (name -> (shape, scale)) laid out at random, the optional ones present or not; returns
    the tensors (None where absent) and the absent ones' values (for mistakes in them)."""
    gen = torch.Generator().manual_seed(pick.seed())
    tensors: Dict[str, Optional[torch.Tensor]] = {}
    spares: Dict[str, torch.Tensor] = {}
    for name, (shape, scale) in shapes.items():
        present = name in required or pick.choice([True, False])
        t = _lay_out(_values(shape, gen, scale), pick.choice(LAYOUTS), dtype, device)
        tensors[name] = t if present else None
        if not present:
            spares[name] = t
    return tensors, spares


def _cell_sizes(pick: Picker) -> Dict[str, int]:
    return dict(T=pick.size(3), B=pick.size(2), C_in=pick.size(3), C=pick.size(3), H=pick.size(4),
                W=pick.size(4))


def draw_convlstm(data, dtypes, device: str) -> Call:
    pick = Picker(data)
    s = _cell_sizes(pick)
    k = pick.choice([1, 3, 5])  # 5 > most images
    dtype = pick.choice(dtypes)
    T, B, C_in, C, H, W = (s[n] for n in ("T", "B", "C_in", "C", "H", "W"))
    shapes = {
        "x": ((T, B, C_in, H, W), 1.0),
        "weight": ((4 * C, C_in + C, k, k), max(1, (C_in + C) * k * k) ** -0.5),
        "bias": ((4 * C,), 0.1),
        "h0": ((B, C, H, W), 0.5),
        "c0": ((B, C, H, W), 0.5),
    }
    tensors, spares = _draw_tensors(pick, shapes, ("x", "weight"), dtype, device)
    return Call(sizes=s, tensors=tensors, options={}, dtype=dtype,
                grad_inputs=[n for n, v in tensors.items() if v is not None],
                channel_dims={"weight": 1, "bias": 0, "h0": 1, "c0": 1}, kernel_args=("weight",), picker=pick,
                spares=spares)


def draw_convgru(data, dtypes, device: str) -> Call:
    pick = Picker(data)
    s = _cell_sizes(pick)
    k_x, k_h = pick.choice([1, 3, 5]), pick.choice([1, 3, 5])  # the two kernels may differ
    dtype = pick.choice(dtypes)
    T, B, C_in, C, H, W = (s[n] for n in ("T", "B", "C_in", "C", "H", "W"))
    shapes = {
        "x": ((T, B, C_in, H, W), 1.0),
        "weight_x": ((3 * C, C_in, k_x, k_x), max(1, C_in * k_x * k_x) ** -0.5),
        "bias_x": ((3 * C,), 0.1),
        "weight_h": ((3 * C, C, k_h, k_h), max(1, C * k_h * k_h) ** -0.5),
        "bias_h": ((3 * C,), 0.1),
        "h0": ((B, C, H, W), 0.5),
    }
    tensors, spares = _draw_tensors(pick, shapes, ("x", "weight_x", "weight_h"), dtype, device)
    # weight_h's dim 1 is C: one more makes (3C, C + 1), which no C fits
    return Call(sizes=s, tensors=tensors, options={}, dtype=dtype,
                grad_inputs=[n for n, v in tensors.items() if v is not None],
                channel_dims={"weight_x": 1, "bias_x": 0, "weight_h": 1, "bias_h": 0, "h0": 1},
                kernel_args=("weight_x", "weight_h"), picker=pick, spares=spares)


def run_convlstm(call: Call, backend: str, layer: Callable = convlstm_layer) -> Tuple[torch.Tensor, ...]:
    return tuple(layer(**call.tensors, backend=backend))


def run_convgru(call: Call, backend: str, layer: Callable = convgru_layer) -> Tuple[torch.Tensor, ...]:
    return (layer(**call.tensors, backend=backend),)


def _zero_states(tensors, names, channels: Callable) -> Dict[str, torch.Tensor]:
    """The initial states ``names``, zeros ``(B, C, H, W)`` where absent (the ops take no default state); a 0-d
    zero where the shapes are too spoiled to say what C is (the op must refuse the spoiled argument first)."""
    x = tensors["x"]
    try:
        zeros = x.new_zeros(x.shape[1], channels(tensors), *x.shape[-2:]) if x.dim() == 5 else x.new_zeros(())
    except (IndexError, RuntimeError):
        zeros = x.new_zeros(())
    return {n: (tensors[n] if tensors[n] is not None else zeros) for n in names}


def _lstm_states(tensors) -> Dict[str, torch.Tensor]:
    return _zero_states(tensors, ("h0", "c0"), lambda t: t["weight"].shape[0] // 4)


def _gru_states(tensors) -> Dict[str, torch.Tensor]:
    return _zero_states(tensors, ("h0",), lambda t: t["weight_h"].shape[1])


def reference_convlstm(tensors, options) -> Tuple[torch.Tensor, ...]:
    t = {**tensors, **_lstm_states(tensors)}
    return tuple(convlstm_layer_ref(t["x"], t["weight"], t["bias"], t["h0"], t["c0"]))


def reference_convgru(tensors, options) -> Tuple[torch.Tensor, ...]:
    t = {**tensors, **_gru_states(tensors)}
    return (convgru_layer_ref(t["x"], t["weight_x"], t["bias_x"], t["weight_h"], t["bias_h"], t["h0"]),)


def convlstm_expected_error(sizes) -> Optional[str]:
    if sizes["C_in"] == 0:
        return "x"
    return "weight" if sizes["C"] == 0 else None


def convgru_expected_error(sizes) -> Optional[str]:
    if sizes["C_in"] == 0:
        return "x"
    return "weight_h" if sizes["C"] == 0 else None


def direct_convlstm(ops, call: Call):
    t = {**call.tensors, **_lstm_states(call.tensors)}
    return ops.convlstm_forward(t["x"], t["weight"], t["bias"], t["h0"], t["c0"])


def direct_convlstm_inference(ops, call: Call):
    t = {**call.tensors, **_lstm_states(call.tensors)}
    return ops.convlstm_inference(t["x"], t["weight"], t["bias"], t["h0"], t["c0"])


def direct_convlstm_backward(ops, call: Call, saved: Dict[str, torch.Tensor]):
    t = {**call.tensors, **_lstm_states(call.tensors)}
    return ops.convlstm_backward(saved["grad_h"], saved["grad_c"], t["x"], t["weight"], t["h0"], t["c0"],
                                 saved["h"], saved["c"], saved["gates"])


def direct_convgru(ops, call: Call):
    t = {**call.tensors, **_gru_states(call.tensors)}
    return ops.convgru_forward(t["x"], t["weight_x"], t["bias_x"], t["weight_h"], t["bias_h"], t["h0"])


def direct_convgru_inference(ops, call: Call):
    t = {**call.tensors, **_gru_states(call.tensors)}
    return (ops.convgru_inference(t["x"], t["weight_x"], t["bias_x"], t["weight_h"], t["bias_h"], t["h0"]),)


def direct_convgru_backward(ops, call: Call, saved: Dict[str, torch.Tensor]):
    t = {**call.tensors, **_gru_states(call.tensors)}
    return ops.convgru_backward(saved["grad_h"], t["x"], t["weight_x"], t["weight_h"], t["h0"], saved["h"],
                                saved["gates"])


def _cell_output_shape(sizes) -> Tuple[int, ...]:
    return tuple(sizes[k] for k in ("T", "B", "C", "H", "W"))


CONVLSTM_OP = OpSpec("convlstm", convlstm_layer, draw_convlstm, run_convlstm, reference_convlstm,
                     convlstm_expected_error, _cell_output_shape,
                     {"native": lambda: torch.ops.deeprnn, "triton": lambda: torch.ops.deeprnn_triton},
                     direct_convlstm, direct_convlstm_backward, outputs=2, states=_lstm_states,
                     cotangent_names=("grad_h", "grad_c"), forward_names=("h", "c", "gates"),
                     grad_order=("x", "weight", "bias", "h0", "c0"), spoilable=("grad_h", "grad_c", "h", "c", "gates"),
                     direct_inference=direct_convlstm_inference)
CONVGRU_OP = OpSpec("convgru", convgru_layer, draw_convgru, run_convgru, reference_convgru, convgru_expected_error,
                    _cell_output_shape, {"native": lambda: torch.ops.deeprnn, "triton": lambda: torch.ops.deeprnn_triton},
                    direct_convgru, direct_convgru_backward,
                    outputs=1, states=_gru_states, cotangent_names=("grad_h",), forward_names=("h", "gates"),
                    grad_order=("x", "weight_x", "bias_x", "weight_h", "bias_h", "h0"),
                    spoilable=("grad_h", "h", "gates"), direct_inference=direct_convgru_inference)
OPS = [CBM_OP, CONVLSTM_OP, CONVGRU_OP]  # a new cell: append its OpSpec here


# ---------------------------------------------------------------------------------------------------------------
# Backends present here.

@dataclass(frozen=True)
class Backend:
    name: str
    device: str
    dtypes: Tuple[torch.dtype, ...]
    examples: int  # public-API fuzz
    direct_examples: int  # direct-op fuzz (forward, then backward)
    why_not: str  # empty when it runs here
    cell_dtypes: Optional[Tuple[torch.dtype, ...]] = None  # ConvLSTM/ConvGRU, where they differ from CBM's
    cell_examples: Optional[Tuple[int, int]] = None  # ConvLSTM/ConvGRU (examples, direct_examples) if not CBM's
    emulates_cuda: bool = False  # native CPU ops running the CUDA tables and kernel bodies (helpers.cuda_emulation)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.device}" + ("-cuda-emulated" if self.emulates_cuda else "")

    def config(self):
        """The context the calls run in: the CUDA path on the host where this backend emulates it."""
        return cuda_emulation() if self.emulates_cuda else contextlib.nullcontext()

    def for_spec(self, spec: OpSpec) -> "Backend":
        """This backend as ``spec``'s tests see it: the cells' dtypes and example counts."""
        if spec.name == "cbm":
            return self
        examples, direct_examples = self.cell_examples or (self.examples, self.direct_examples)
        return dataclasses.replace(self, dtypes=self.cell_dtypes or self.dtypes, examples=examples,
                                   direct_examples=direct_examples)


def _backends() -> List[Backend]:
    cuda = torch.cuda.is_available()
    no_gpu = "" if cuda else "needs a CUDA GPU"
    native_cpu = "" if _native.is_available() else _native.unavailable_reason()
    native_cuda = no_gpu or ("" if _native.cuda_compiled() else "the extension was built without CUDA")
    interp = triton_backend.is_available() and triton_backend.interpreter_active()
    triton_cpu = "" if interp else "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    triton_cuda = no_gpu or ("" if triton_backend.is_available() and not interp else "Triton not usable on CUDA here")
    return [
        Backend("reference", "cpu", (torch.float64, torch.float32, torch.bfloat16, torch.float16), 40, 0, "",
                cell_examples=(100, 0)),
        Backend("native", "cpu", _native.CPU_DTYPES, 150, 150, native_cpu),
        # The driver's CUDA configuration and the CUDA kernels' bodies on CPU tensors (float16 storage:
        # tests/test_cuda_emulation.py, since the public API keeps CPU tensors to the CPU dtypes).
        Backend("native", "cpu", _native.CPU_DTYPES, 60, 60, native_cpu, emulates_cuda=True),
        Backend("triton", "cpu", triton_backend.INTERPRETER_DTYPES, 12, 6, triton_cpu,  # the interpreter is slow
                cell_dtypes=triton_backend.CELL_INTERPRETER_DTYPES),
        Backend("native", "cuda", _native.CUDA_DTYPES, 150, 150, native_cuda),
        Backend("triton", "cuda", triton_backend.CUDA_DTYPES, 60, 60, triton_cuda),
    ]


BACKENDS = _backends()


def _param(b: Backend):
    marks = [pytest.mark.cuda] if b.device == "cuda" else []
    if b.why_not:
        marks.append(pytest.mark.skip(reason=b.why_not))
    return pytest.param(b, id=b.label, marks=marks)


BACKEND_PARAMS = [_param(b) for b in BACKENDS]
DIRECT_PARAMS = [_param(b) for b in BACKENDS if b.name != "reference"]


# ---------------------------------------------------------------------------------------------------------------
# Checking one call.

def _has_inference_op(spec: OpSpec, ops) -> bool:
    """Whether ``ops`` (a torch.ops namespace) has ``spec``'s inference op (the native backend has; Triton not)."""
    return spec.direct_inference is not None and hasattr(ops, f"{spec.name}_inference")


def _draw_mistake(data, call: Call, device: str) -> None:
    """Now and then, spoil one argument (only where the sizes themselves are valid, so one error is due). With a
    picker, one of the (kind, argument) pairs that apply; else (CBM) a pair that may not apply (no mistake)."""
    if call.sizes["C_in"] == 0 or call.sizes["C"] == 0 or not _rarely(data, call):
        return
    if call.picker is not None:
        kind = call.picker.choice(KINDS_OF_MISTAKE)
        names = [name for name in call.tensors if _spoiled(call, kind, name, device) is not None]
        if names:
            spoiled = _spoiled(call, kind, call.picker.choice(names), device)
            call.tensors, call.mistake = spoiled.tensors, spoiled.mistake
        return
    kind = data.draw(st.sampled_from(KINDS_OF_MISTAKE))
    name = data.draw(st.sampled_from(list(call.tensors)))
    call.mistake = _apply_mistake(call, kind, name, device)


def _spoiled(call: Call, kind: str, name: str, device: str) -> Optional[Call]:
    """A copy of ``call`` with a ``kind`` mistake in ``name`` (an absent optional argument given its spare value
    first), or None where that mistake does not apply."""
    copy = dataclasses.replace(call, tensors=dict(call.tensors), mistake=None)
    if copy.tensors[name] is None and name in call.spares:
        copy.tensors[name] = call.spares[name]
    copy.mistake = _apply_mistake(copy, kind, name, device)
    return copy if copy.mistake is not None else None


def _rarely(data, call: Call) -> bool:
    return call.picker.rarely() if call.picker is not None else data.draw(rarely())


def _choose(data, call: Call, options):
    return call.picker.choice(options) if call.picker is not None else data.draw(st.sampled_from(list(options)))


#: CPU driver chunk sizes (elements; csrc/recurrence.h): default, all steps at once, one step per chunk (the cells'
#: per-step concatenated convolutions) and a few steps per chunk at the fuzz's small sizes.
DRIVER_CHUNKS = (None, 0, 1, 3000)


def _driver_chunk(data, call: Call, backend: Backend):
    """For the native CPU backend, now one, now another of the driver's chunk sizes, so every branch of the
    recurrence driver meets the fuzz's shapes, dtypes and mistakes."""
    native_cpu = (backend.name, backend.device) == ("native", "cpu") and not backend.emulates_cuda
    return cpu_conv_chunk_elements(_choose(data, call, DRIVER_CHUNKS) if native_cpu else None)


def _expect_value_error(fn, name: str) -> None:
    """``fn()`` raises a ValueError whose message has ``name`` as a word: "x" in "x's dtype", not in "expected"
    or "weight_x"."""
    with pytest.raises(ValueError) as info:
        fn()
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", str(info.value)), \
        f"the ValueError does not name {name}: {info.value}"


def _cotangents(shape, dtype, device, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(2)]


def _check_empty(call: Call, outputs, spec: OpSpec, device: str, grads: bool = True) -> None:
    shape = spec.output_shape(call.sizes)
    inputs = [call.tensors[k] for k in call.grad_inputs]
    for out in outputs:
        assert tuple(out.shape) == shape and out.dtype == call.dtype and out.device.type == device
    if not grads:
        return
    grads = torch.autograd.grad(outputs, inputs, _cotangents(shape, call.dtype, device, 0)[: len(outputs)])
    for name, t, g in zip(call.grad_inputs, inputs, grads):
        assert g.shape == t.shape and not g.any(), f"gradient of {name} of an empty call must be zeros"


def _reference_vjp(spec: OpSpec, call: Call, tensors, cotangents, with_states: bool = False,
                   dtype: torch.dtype = torch.float64, jitter: Optional[int] = None):
    """``spec.reference`` on contiguous CPU copies of ``tensors`` in ``dtype`` (float64: the ground truth), and its
    vector-Jacobian product for ``cotangents`` (none: outputs only). Returns the outputs and ``{name: gradient}``
    for ``call.grad_inputs`` and, ``with_states``, every initial state (zeros where the call has none).
    ``jitter=seed``: every input and cotangent first multiplied by its own random 1 +- half an ulp of the
    call's dtype (for :func:`_assert_all_close`)."""
    gen = torch.Generator().manual_seed(jitter) if jitter is not None else None
    half_ulp = torch.finfo(call.dtype).eps / 2

    def exact(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().to("cpu", torch.float64).contiguous()
        if jitter is not None:
            v = v * (1 + half_ulp * (2 * torch.rand(v.shape, generator=gen, dtype=v.dtype) - 1))
        return v.to(dtype)

    leaves = {k: (exact(v).requires_grad_() if k in call.grad_inputs else (v.cpu() if v is not None else None))
              for k, v in tensors.items()}
    if with_states:
        for k, v in spec.states(tensors).items():
            if leaves[k] is None:
                leaves[k] = exact(v).requires_grad_()
    outputs = spec.reference(leaves, call.options)
    if not cotangents:
        return outputs, {}
    wrt = {k: v for k, v in leaves.items() if v is not None and v.requires_grad}
    grads = torch.autograd.grad(outputs, list(wrt.values()), [exact(c) for c in cotangents])
    return outputs, dict(zip(wrt, grads))


#: above this, a result is rounding noise in its dtype (see _assert_all_close): only checked to be finite
NOISE = 0.25


def _assert_all_close(results: Dict[str, Tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype,
                      reference: Callable[..., Dict[str, torch.Tensor]]) -> None:
    """docs/design.md section 5 tolerances for every ``what: (got, float64 reference)``.

    Those tolerances hold for well-conditioned results. A small result summing larger terms of both signs (a bias
    gradient over a few pixels: 0.031 out of terms 0.349 and -0.302, which bf16 holds to +-0.001) misses them
    however it is computed (bf16 by 5e-2; float32 by 1.2e-5 in another example). So a result over the tolerance
    is held to its noise floor instead, the larger of 4x its condition (the largest relative change of the
    float64 reference's result when every input and cotangent moves by its own random half an ulp of ``dtype``:
    ``reference(jitter=seed)``, four draws) and 2x the largest error of PyTorch's reference computing it in
    ``dtype``, on those inputs and on the four jittered ones (``reference(dtype=dtype[, jitter=seed])``: this
    also covers a relu whose input is within rounding of 0, where the gradient jumps); past NOISE it is rounding
    noise and only has to be finite. Well-conditioned
    results keep the tolerance (a 5% error in a bf16 output, or a 10% one in a bf16 bias gradient, fails), and
    the call's other results and the other dtypes' calls still see a wrong line."""
    floors: Dict[str, float] = {}
    for what, (got, ref) in results.items():
        assert got.dtype == dtype, f"{what}: dtype {got.dtype}, not {dtype}"
        try:
            assert_close_rel(got.cpu(), ref, dtype, what)
        except AssertionError:
            if got.shape != ref.shape:
                raise
            if not floors:
                exact = [reference(jitter=seed) for seed in range(4)]
                same = [reference(dtype=dtype)] + [reference(dtype=dtype, jitter=seed) for seed in range(4)]
                floors = {k: max(4 * max(rel_err(d[k], r) for d in exact), 2 * max(rel_err(d[k], r) for d in same))
                          for k, (_, r) in results.items()}
            err, floor = rel_err(got.cpu(), ref), floors[what]
            assert err <= max(floor, TOLERANCES[dtype]) or (floor > NOISE and err < float("inf")), \
                f"{what}: relative error {err:.3e} > {TOLERANCES[dtype]:.0e} ({dtype}), > its noise floor {floor:.3e}"


def _check_against_reference(call: Call, outputs, spec: OpSpec, device: str, grads: bool = True) -> None:
    inputs = [call.tensors[k] for k in call.grad_inputs]
    cot = _cotangents(spec.output_shape(call.sizes), call.dtype, device, 1)[: len(outputs)] if grads else []
    ref_outputs, ref_grads = _reference_vjp(spec, call, call.tensors, cot)
    assert len(outputs) == len(ref_outputs)
    got_grads = torch.autograd.grad(outputs, inputs, cot) if grads else []

    def named(outs, gs) -> Dict[str, torch.Tensor]:
        return {**{f"output {i}": o for i, o in enumerate(outs)}, **{f"gradient of {k}": g for k, g in gs.items()}}

    got, ref = named(outputs, dict(zip(call.grad_inputs, got_grads))), named(ref_outputs, ref_grads)
    _assert_all_close({k: (got[k], ref[k]) for k in got}, call.dtype,
                      lambda **how: named(*_reference_vjp(spec, call, call.tensors, cot, **how)))


def check_public_call(spec: OpSpec, backend: Backend, call: Call, run: Callable,
                      expected_error: Optional[Callable] = None, grads: bool = True) -> str:
    """The contract for one call of the public API (or of an op called directly, refusing the sizes that
    ``expected_error`` names; ``grads=False``: an op without autograd, values only); returns the outcome (for
    the statistics)."""
    if call.mistake is not None:
        _expect_value_error(lambda: run(call), call.mistake[1])
        return f"ValueError ({call.mistake[0]} of {call.mistake[1]})"
    refused = (expected_error or spec.expected_error)(call.sizes)
    if refused is not None:
        _expect_value_error(lambda: run(call), refused)
        return "ValueError (zero channels)"
    outputs = run(call)
    assert isinstance(outputs, tuple) and len(outputs) == spec.outputs, f"{len(outputs)} outputs"
    if 0 in spec.output_shape(call.sizes):
        _check_empty(call, outputs, spec, backend.device, grads)
        return "empty"
    _check_against_reference(call, outputs, spec, backend.device, grads)
    return "matches reference"


def _record(test: str, backend: Backend, outcome: str) -> None:
    RAN[(test, backend.label)][outcome if DETAIL else outcome.split(" (")[0]] += 1


# ---------------------------------------------------------------------------------------------------------------
# The tests.

@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_public_api_matches_reference_or_names_the_argument(spec: OpSpec, backend: Backend, capsys):
    backend = backend.for_spec(spec)
    RAN.pop(("public", backend.label), None)

    @fuzz_settings(backend.examples)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        with _driver_chunk(data, call, backend):
            _record("public", backend, check_public_call(spec, backend, call, lambda c: spec.run(c, backend.name)))

    with backend.config():
        check()
    _report(capsys, "public", backend, spec)


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", DIRECT_PARAMS)
def test_direct_op_calls_never_crash(spec: OpSpec, backend: Backend, capsys):
    """``torch.ops.<backend>`` called directly, forward and backward (and, now and then, the inference op where
    there is one): a ValueError naming the argument for any bad argument (the shapes, dtypes and devices the
    kernels index with included), else the reference's numbers."""
    if backend.name not in spec.direct_ops:
        pytest.skip(f"{spec.name} has no {backend.name} ops to call directly")
    backend = backend.for_spec(spec)
    RAN.pop(("direct", backend.label), None)
    ops = spec.direct_ops[backend.name]()

    @fuzz_settings(backend.direct_examples)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        direct_error = spec.direct_expected_error or spec.expected_error
        if spec.option_codes and call.mistake is None and direct_error(call.sizes) is None and data.draw(rarely()):
            which = data.draw(st.integers(0, len(spec.option_codes) - 1))
            call.codes = tuple(7 if i == which else code for i, code in enumerate(_codes(call.options)))
            _expect_value_error(lambda: spec.direct(ops, call), spec.option_codes[which])
            _record("direct", backend, "ValueError (option code)")
            return
        if _has_inference_op(spec, ops) and _rarely(data, call):
            plain = dataclasses.replace(call, tensors={k: (v.detach() if v is not None else None)
                                                       for k, v in call.tensors.items()})
            outcome = check_public_call(spec, backend, plain, lambda c: spec.direct_inference(ops, c), direct_error,
                                        grads=False)
            _record("direct", backend, f"inference {outcome}")
            return
        outcome = check_public_call(spec, backend, call, lambda c: spec.direct(ops, c)[: spec.outputs], direct_error)
        if outcome == "matches reference":
            outcome = _check_direct_backward(spec, ops, call, data, backend)
        _record("direct", backend, outcome)

    with backend.config():
        check()
    _report(capsys, "direct", backend, spec)


def _check_direct_backward(spec: OpSpec, ops, call: Call, data, backend: Backend) -> str:
    """The backward op called directly: with a spoiled saved tensor or gradient, a ValueError naming it; else
    gradients equal to the reference's vector-Jacobian product for the same cotangents."""
    detached = {k: (v.detach() if v is not None else None) for k, v in call.tensors.items()}
    plain = Call(call.sizes, detached, call.options, call.dtype, picker=call.picker)
    forward = spec.direct(ops, plain)
    assert len(forward) == len(spec.forward_names)
    cotangents = _cotangents(tuple(forward[0].shape), call.dtype, backend.device, 2)
    saved = {**dict(zip(spec.cotangent_names, cotangents)), **dict(zip(spec.forward_names, forward))}
    if _rarely(data, call):
        name = _choose(data, call, spec.spoilable)
        kind = _choose(data, call, ["rank", "dtype", "shape"])
        other = torch.float32 if call.dtype == torch.float64 else torch.float64
        saved[name] = {"rank": saved[name][0], "dtype": saved[name].to(other),
                       "shape": saved[name].narrow(1, 0, 0)}[kind]
        _expect_value_error(lambda: spec.direct_backward(ops, plain, saved), name)
        return f"ValueError ({kind} of {name})"
    grads = spec.direct_backward(ops, plain, saved)
    assert len(grads) == len(spec.grad_order)
    cotangents = [saved[k] for k in spec.cotangent_names]
    _, ref_grads = _reference_vjp(spec, call, detached, cotangents, with_states=True)
    results = {f"direct backward: gradient of {k}": (g, ref_grads[k]) for k, g in zip(spec.grad_order, grads)
               if k in ref_grads}  # not the biases the call leaves out
    assert len(results) == len(ref_grads)
    _assert_all_close(results, call.dtype, lambda **how: {
        f"direct backward: gradient of {k}": g
        for k, g in _reference_vjp(spec, call, detached, cotangents, with_states=True, **how)[1].items()})
    return "matches reference"


SAVED_MISTAKES = ("rank", "dtype", "shape")


def _spoil_saved(t: torch.Tensor, kind: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A saved tensor or gradient of the backward op with a ``kind`` mistake, None where it would not be one."""
    if kind == "rank":
        return t[0] if t.shape[0] else t[None]
    if kind == "dtype":
        return t.to(torch.float32 if dtype == torch.float64 else torch.float64)
    return t.narrow(1, 0, 0) if t.shape[1] else None


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_every_mistake_is_refused_naming_its_argument(spec: OpSpec, backend: Backend, capsys):
    """Every kind of mistake in every argument it applies to (not one now and then): the public API, the direct
    forward and inference ops, and the backward op (every kind in every saved tensor and gradient), each a
    ValueError naming the argument. Zero sizes included: validation comes before the empty shortcut."""
    backend = backend.for_spec(spec)
    RAN.pop(("mistakes", backend.label), None)
    ops = spec.direct_ops[backend.name]() if backend.name in spec.direct_ops else None

    @fuzz_settings(3)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        if call.sizes["C_in"] == 0 or call.sizes["C"] == 0:  # refused anyway: no mistake is due
            return
        runs = [("public", lambda c: spec.run(c, backend.name))]
        if ops is not None:
            runs.append(("direct", lambda c: spec.direct(ops, c)))
            if _has_inference_op(spec, ops):
                runs.append(("inference", lambda c: spec.direct_inference(ops, c)))
        for kind in KINDS_OF_MISTAKE:
            for name in call.tensors:
                spoiled = _spoiled(call, kind, name, backend.device)
                for where, run in runs if spoiled is not None else ():
                    _expect_value_error(lambda: run(spoiled), name)
                    _record("mistakes", backend, f"ValueError ({where}: {kind} of {name})")
        if ops is None or 0 in spec.output_shape(call.sizes):
            return
        plain = Call(call.sizes, {k: (v.detach() if v is not None else None) for k, v in call.tensors.items()},
                     call.options, call.dtype)
        forward = spec.direct(ops, plain)
        cotangents = _cotangents(tuple(forward[0].shape), call.dtype, backend.device, 2)
        saved = {**dict(zip(spec.cotangent_names, cotangents)), **dict(zip(spec.forward_names, forward))}
        spec.direct_backward(ops, plain, saved)  # the unspoiled call runs
        for name in spec.spoilable:
            for kind in SAVED_MISTAKES:
                spoiled = _spoil_saved(saved[name], kind, call.dtype)
                if spoiled is not None:
                    _expect_value_error(lambda: spec.direct_backward(ops, plain, {**saved, name: spoiled}), name)
                    _record("mistakes", backend, f"ValueError (backward: {kind} of {name})")

    with backend.config():
        check()
    _report(capsys, "mistakes", backend, spec, unit="calls")


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", [p for p in DIRECT_PARAMS if p.values[0].name == "native"])
def test_through_torch_compile(spec: OpSpec, backend: Backend, capsys):
    """The public API traced by torch.compile (aot_eager: the fake kernels and autograd formula, then the real
    op): the same contract, empty and refused sizes included."""
    import torch._dynamo

    backend = backend.for_spec(spec)
    RAN.pop(("compile", backend.label), None)

    @fuzz_settings(4)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        torch._dynamo.reset()  # a fresh trace per example (and no recompile limit to run into)
        compiled = torch.compile(spec.layer, backend="aot_eager", dynamic=False)
        _record("compile", backend,
                check_public_call(spec, backend, call, lambda c: spec.run(c, backend.name, compiled)))

    with backend.config():
        check()
    _report(capsys, "compile", backend, spec)


def test_issue_repros_leave_the_process_alive():
    """The reported crashes, in a fresh process: an empty batch through cbm_layer, the CBM module and the native
    op directly (a SIGFPE before), zero channels, and a backward op fed a gradient of another dtype (the CPU
    kernels would have read it as the wrong type)."""
    if not _native.is_available():
        pytest.skip(_native.unavailable_reason())
    script = textwrap.dedent("""
        import torch
        from deeprnn_cuda import CBM, cbm_layer
        x = torch.randn(3, 0, 3, 5, 5, requires_grad=True)
        w_r, w_t = torch.randn(2, 3, 3, 3, requires_grad=True), torch.randn(2, 5, 3, 3, requires_grad=True)
        o, c = cbm_layer(x, w_r, None, w_t, None, backend="native")
        (o.sum() + c.sum()).backward()
        assert o.shape == (3, 0, 2, 5, 5) and not w_r.grad.any() and not w_t.grad.any()
        assert CBM(3, 2, backend="native")(x)[0].shape == (3, 0, 2, 5, 5)
        ops = torch.ops.deeprnn
        o, c, r = ops.cbm_forward(x.detach(), w_r.detach(), None, w_t.detach(), None, torch.zeros(0, 2, 5, 5),
                                  None, 1, 0, 0)
        assert o.shape == (3, 0, 2, 5, 5)
        refused = 0
        for args in [(torch.randn(3, 2, 0, 5, 5), torch.randn(2, 0, 3, 3), torch.randn(2, 2, 3, 3)),
                     (torch.randn(3, 2, 3, 5, 5), torch.randn(0, 3, 3, 3), torch.randn(0, 3, 3, 3))]:
            try:
                ops.cbm_forward(args[0], args[1], None, args[2], None, torch.zeros(2, args[1].shape[0], 5, 5),
                                None, 1, 0, 0)
            except ValueError:
                refused += 1
        x, w_r, w_t, c0 = torch.randn(2, 1, 1, 4, 4), torch.randn(1, 1, 3, 3), torch.randn(1, 2, 3, 3), torch.zeros(1, 1, 4, 4)
        o, c, r = ops.cbm_forward(x, w_r, None, w_t, None, c0, None, 1, 0, 0)
        try:
            ops.cbm_backward(o.double(), o, x, w_r, w_t, c0, r, c, None, 1, 0, 0)
        except ValueError as e:
            refused += "grad_o" in str(e)
        print("refused", refused)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["refused", "3"]


# ---------------------------------------------------------------------------------------------------------------
# The defects the fuzz found, each checked in a fresh process (before their fix some crashed it).

_CALLS_PRELUDE = """
import re, sys, torch
import deeprnn_cuda
from deeprnn_cuda import triton as triton_backend

def expect(what, name, fn):
    try:
        out = fn()
    except ValueError as e:
        named = re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", str(e))
        print(f"{what}:", "refused" if named else f"ValueError not naming {name}: {e}", flush=True)
        return
    except Exception as e:
        print(f"{what}:", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return
    print(f"{what}:", "ran", flush=True)

def expect_empty(what, fn):
    try:
        out = fn()
        ok = all(t.numel() == 0 for t in out)
        print(f"{what}:", "empty" if ok else "not empty", flush=True)
    except Exception as e:
        print(f"{what}:", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
"""


def _run_calls(body: str) -> List[str]:
    """Run ``_CALLS_PRELUDE + body`` in a fresh process; its output lines (``what: outcome``), or a failure
    naming how the process died."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    script = _CALLS_PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"exit code {done.returncode} after {lines}: {done.stderr[-2000:]}"
    return lines


def _bad(lines: List[str], good: str) -> List[str]:
    """The lines whose outcome is not ``good``."""
    return [line for line in lines if line.split(": ", 1)[1] != good]


def test_cells_refuse_zero_input_channels():
    """x with C_in = 0 through both cells' public API on every CPU backend: a ValueError naming x, as CBM."""
    if not _native.is_available():
        pytest.skip(_native.unavailable_reason())
    lines = _run_calls("""
        from deeprnn_cuda import convgru_layer, convlstm_layer
        x, h0 = torch.randn(2, 1, 0, 3, 3), torch.zeros(1, 2, 3, 3)
        backends = ["reference", "native"] + (["triton"] if triton_backend.cell_supports(x) else [])
        for backend in backends:  # triton last: it kills the process
            expect(f"convlstm-{backend}", "x", lambda: convlstm_layer(x, torch.randn(8, 2, 3, 3), backend=backend))
            expect(f"convgru-{backend}", "x", lambda: convgru_layer(x, torch.randn(6, 0, 3, 3), None,
                                                                    torch.randn(6, 2, 3, 3), backend=backend))
    """)
    assert len(lines) >= 4 and not _bad(lines, "refused"), lines


def test_native_cell_ops_refuse_another_device():
    """The native cell ops called directly with one argument on the meta device: a ValueError naming it."""
    if not _native.is_available():
        pytest.skip(_native.unavailable_reason())
    lines = _run_calls("""
        ops = torch.ops.deeprnn
        x, s = torch.randn(2, 1, 2, 4, 4), torch.zeros(1, 3, 4, 4)
        w, b = torch.randn(12, 5, 3, 3), torch.randn(12)
        wx, wh = torch.randn(9, 2, 3, 3), torch.randn(9, 3, 3, 3)
        meta = lambda t: t.to("meta")
        expect("convlstm_forward", "bias", lambda: ops.convlstm_forward(x, w, meta(b), s, s))
        expect("convlstm_inference", "c0", lambda: ops.convlstm_inference(x, w, b, s, meta(s)))
        expect("convgru_forward", "h0", lambda: ops.convgru_forward(x, wx, None, wh, None, meta(s)))
        expect("convgru_inference", "weight_h", lambda: ops.convgru_inference(x, wx, None, meta(wh), None, s))
        h, c, gates = ops.convlstm_forward(x, w, b, s, s)
        expect("convlstm_backward", "grad_h", lambda: ops.convlstm_backward(meta(h), c, x, w, s, s, h, c, gates))
        h, gates = ops.convgru_forward(x, wx, None, wh, None, s)
        expect("convgru_backward", "gates", lambda: ops.convgru_backward(h, x, wx, wh, s, h, meta(gates)))
    """)
    assert len(lines) == 6 and not _bad(lines, "refused"), lines


def test_triton_cell_ops_validate_their_arguments():
    """The Triton cell ops called directly: bad shapes, kernels and dtypes refused naming the argument (not read
    out of bounds), zero hidden channels too (as the native ops), an empty image an empty result."""
    if not triton_backend.is_available():
        pytest.skip(triton_backend.unavailable_reason())
    lines = _run_calls("""
        ops = torch.ops.deeprnn_triton
        device = "cuda" if torch.cuda.is_available() and not triton_backend.interpreter_active() else "cpu"
        if not triton_backend.cell_supports(torch.zeros(1, device=device)):
            sys.exit(0)
        r = lambda *shape, **kw: torch.randn(*shape, device=device, **kw)
        x, s, w, b = r(2, 1, 2, 4, 4), r(1, 3, 4, 4), r(12, 5, 3, 3), r(12)
        wx, wh = r(9, 2, 3, 3), r(9, 3, 3, 3)
        expect("convlstm c0 batch", "c0", lambda: ops.convlstm_forward(r(2, 3, 2, 4, 4), w, b, r(3, 3, 4, 4), s))
        expect("convlstm h0 channels", "h0", lambda: ops.convlstm_forward(x, w, b, r(1, 4, 4, 4), s))
        expect("convlstm even kernel", "weight", lambda: ops.convlstm_forward(x, r(12, 5, 4, 4), b, s, s))
        expect("convlstm h0 dtype", "h0", lambda: ops.convlstm_forward(x, w, b, s.double(), s))
        expect("convgru h0 image", "h0", lambda: ops.convgru_forward(x, wx, None, wh, None, r(1, 3, 3, 3)))
        expect("convgru x rank", "x", lambda: ops.convgru_forward(x[0], wx, None, wh, None, s))
        expect_empty("convlstm empty image", lambda: ops.convlstm_forward(
            r(2, 1, 2, 0, 4), w, None, r(1, 3, 0, 4), r(1, 3, 0, 4)))
        expect("convgru zero channels", "weight_h", lambda: ops.convgru_forward(x, r(0, 2, 3, 3), None,
                                                                                r(0, 0, 3, 3), None, r(1, 0, 4, 4)))
    """)
    if not lines:
        pytest.skip("the Triton cell ops run on no device here")
    assert len(lines) == 8 and not _bad(lines[:6] + lines[7:], "refused") and not _bad(lines[6:7], "empty"), lines
