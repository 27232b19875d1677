"""Property-based tests of the op contract (hypothesis), on every backend this machine has.

Random sizes (0 and 1 included, kernels larger than the image), every act/merge/Temporal Dropout option, every
dtype a backend takes, contiguous, non-contiguous, channels_last and expanded (stride 0) tensors, and now and then
one mistake (a wrong rank, channel count, kernel, dtype or device). Each call must either match the float64
reference (values and gradients, DESIGN.md section 5 tolerances) or raise a ``ValueError`` that names the
argument; an empty sequence, batch or image gives empty outputs and zero gradients; the process never dies.
The compiled ops are also called directly (``torch.ops.deeprnn*``, where bad arguments must be a ValueError, not
a crash) and through ``torch.compile``.

The examples are bounded and derandomized: the same ones run every time (``DEEPRNN_FUZZ_SCALE=10`` runs ten
times as many). Each test prints how many examples ran on its backend and how they ended (a reference match,
an empty result, a ValueError). OPS is the extension point: a new cell (ConvLSTM, ConvGRU) adds an
:class:`OpSpec`. The CUDA entries are written for a GPU and skipped without one; they have never run.
"""
from __future__ import annotations

import collections
import os
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

from deeprnn_cuda import _native, cbm_layer
from deeprnn_cuda import triton as triton_backend
from deeprnn_cuda._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES
from deeprnn_cuda.reference import cbm_layer_ref
from helpers import assert_close_rel

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("DEEPRNN_FUZZ_SCALE", "1"))
RAN: Dict[Tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(examples: int) -> settings:
    """Bounded, reproducible runs: the same examples every time, no example database, no deadline (CI is slow)."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: slow here, and the example is small
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)


def _report(capsys, test: str, backend: "Backend") -> None:
    """Print, past pytest's capture, how many examples this test ran on ``backend`` and how they ended."""
    outcomes = RAN[(test, f"{backend.name}-{backend.device}")]
    detail = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    with capsys.disabled():
        print(f"\ncontract fuzz {test}[{backend.name}-{backend.device}]: {sum(outcomes.values())} examples ({detail})")


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
    elif kind == "channels" and name in ("weight_r", "weight_t", "bias_r", "bias_t", "c0"):
        dim = {"weight_r": 1, "weight_t": 1, "bias_r": 0, "bias_t": 0, "c0": 2}[name]
        spoiled = torch.cat([t, t.narrow(dim, 0, 1)], dim) if t.shape[dim] else t.new_zeros(1)
    elif kind == "kernel" and name in ("weight_r", "weight_t"):
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
    ``layer``) and returns its outputs. ``reference(tensors, options)`` is the independent float64 ground truth on
    contiguous copies. ``expected_error(sizes)`` names the argument a ValueError must name for sizes that are
    refused (zero channels), else None. ``output_shape(sizes)`` is every output's shape. ``direct_ops`` maps a
    backend to its ``torch.ops`` namespace; ``direct(namespace, call)`` and ``direct_backward(namespace, call,
    saved)`` call its forward and backward ops.
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


CBM_OP = OpSpec("cbm", cbm_layer, draw_cbm, run_cbm, reference_cbm, cbm_expected_error, cbm_output_shape, _direct_namespaces(),
                direct_cbm, direct_cbm_backward)
OPS = [CBM_OP]  # ConvLSTM / ConvGRU: append their OpSpec here as they land


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


def _backends() -> List[Backend]:
    cuda = torch.cuda.is_available()
    no_gpu = "" if cuda else "needs a CUDA GPU"
    native_cpu = "" if _native.is_available() else _native.unavailable_reason()
    native_cuda = no_gpu or ("" if _native.cuda_compiled() else "the extension was built without CUDA")
    interp = triton_backend.is_available() and triton_backend.interpreter_active()
    triton_cpu = "" if interp else "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    triton_cuda = no_gpu or ("" if triton_backend.is_available() and not interp else "Triton not usable on CUDA here")
    return [
        Backend("reference", "cpu", (torch.float64, torch.float32, torch.bfloat16, torch.float16), 40, 0, ""),
        Backend("native", "cpu", _native.CPU_DTYPES, 150, 150, native_cpu),
        Backend("triton", "cpu", triton_backend.INTERPRETER_DTYPES, 12, 6, triton_cpu),  # the interpreter is slow
        Backend("native", "cuda", _native.CUDA_DTYPES, 150, 150, native_cuda),
        Backend("triton", "cuda", triton_backend.CUDA_DTYPES, 60, 60, triton_cuda),
    ]


BACKENDS = _backends()


def _param(b: Backend):
    marks = [pytest.mark.cuda] if b.device == "cuda" else []
    if b.why_not:
        marks.append(pytest.mark.skip(reason=b.why_not))
    return pytest.param(b, id=f"{b.name}-{b.device}", marks=marks)


BACKEND_PARAMS = [_param(b) for b in BACKENDS]
DIRECT_PARAMS = [_param(b) for b in BACKENDS if b.name != "reference"]


# ---------------------------------------------------------------------------------------------------------------
# Checking one call.

def _draw_mistake(data, call: Call, device: str) -> None:
    """Now and then, spoil one argument (only where the sizes themselves are valid, so one error is due)."""
    if call.sizes["C_in"] == 0 or call.sizes["C"] == 0 or not data.draw(rarely()):
        return
    kind = data.draw(st.sampled_from(KINDS_OF_MISTAKE))
    name = data.draw(st.sampled_from(list(call.tensors)))
    call.mistake = _apply_mistake(call, kind, name, device)


def _expect_value_error(fn, name: str) -> None:
    with pytest.raises(ValueError) as info:
        fn()
    assert name in str(info.value), f"the ValueError does not name {name}: {info.value}"


def _cotangents(shape, dtype, device, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(2)]


def _check_empty(call: Call, outputs, spec: OpSpec, device: str) -> None:
    shape = spec.output_shape(call.sizes)
    inputs = [call.tensors[k] for k in call.grad_inputs]
    for out in outputs:
        assert tuple(out.shape) == shape and out.dtype == call.dtype and out.device.type == device
    grads = torch.autograd.grad(outputs, inputs, _cotangents(shape, call.dtype, device, 0)[: len(outputs)])
    for name, t, g in zip(call.grad_inputs, inputs, grads):
        assert g.shape == t.shape and not g.any(), f"gradient of {name} of an empty call must be zeros"


def _check_against_reference(call: Call, outputs, spec: OpSpec, device: str) -> None:
    inputs = [call.tensors[k] for k in call.grad_inputs]
    ref_tensors = {k: (v.detach().double().cpu().contiguous().requires_grad_() if k in call.grad_inputs
                       else (v.cpu() if v is not None else None)) for k, v in call.tensors.items()}
    ref_outputs = spec.reference(ref_tensors, call.options)
    cot = _cotangents(tuple(ref_outputs[0].shape), call.dtype, device, 1)[: len(outputs)]
    grads = torch.autograd.grad(outputs, inputs, cot)
    ref_grads = torch.autograd.grad(ref_outputs, [ref_tensors[k] for k in call.grad_inputs],
                                    [g.cpu().double() for g in cot])
    for i, (got, ref) in enumerate(zip(outputs, ref_outputs)):
        assert got.dtype == call.dtype
        assert_close_rel(got.cpu(), ref, call.dtype, f"output {i}")
    for name, got, ref in zip(call.grad_inputs, grads, ref_grads):
        assert_close_rel(got.cpu(), ref, call.dtype, f"gradient of {name}")


def check_public_call(spec: OpSpec, backend: Backend, call: Call, run: Callable) -> str:
    """The contract for one call of the public API; returns the outcome (for the statistics)."""
    if call.mistake is not None:
        _expect_value_error(lambda: run(call), call.mistake[1])
        return f"ValueError ({call.mistake[0]} of {call.mistake[1]})"
    refused = spec.expected_error(call.sizes)
    if refused is not None:
        _expect_value_error(lambda: run(call), refused)
        return "ValueError (zero channels)"
    outputs = run(call)
    if 0 in spec.output_shape(call.sizes):
        _check_empty(call, outputs, spec, backend.device)
        return "empty"
    _check_against_reference(call, outputs, spec, backend.device)
    return "matches reference"


def _record(test: str, backend: Backend, outcome: str) -> None:
    RAN[(test, f"{backend.name}-{backend.device}")][outcome.split(" (")[0]] += 1


# ---------------------------------------------------------------------------------------------------------------
# The tests.

@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_public_api_matches_reference_or_names_the_argument(spec: OpSpec, backend: Backend, capsys):
    @fuzz_settings(backend.examples)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        _record("public", backend, check_public_call(spec, backend, call, lambda c: spec.run(c, backend.name)))

    check()
    _report(capsys, "public", backend)


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", DIRECT_PARAMS)
def test_direct_op_calls_never_crash(spec: OpSpec, backend: Backend, capsys):
    """``torch.ops.<backend>`` called directly, forward and backward: a ValueError naming the argument for any bad
    argument (the shapes, dtypes and devices the kernels index with included), else the reference's numbers."""
    ops = spec.direct_ops[backend.name]()

    @fuzz_settings(backend.direct_examples)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        if call.mistake is None and spec.expected_error(call.sizes) is None and data.draw(rarely()):
            which = data.draw(st.integers(0, 2))
            call.codes = tuple(7 if i == which else code for i, code in enumerate(_codes(call.options)))
            _expect_value_error(lambda: spec.direct(ops, call), ("act_r", "act_t", "merge")[which])
            _record("direct", backend, "ValueError (option code)")
            return
        outcome = check_public_call(spec, backend, call, lambda c: spec.direct(ops, c)[:2])
        if outcome == "matches reference":
            outcome = _check_direct_backward(spec, ops, call, data, backend)
        _record("direct", backend, outcome)

    check()
    _report(capsys, "direct", backend)


def _check_direct_backward(spec: OpSpec, ops, call: Call, data, backend: Backend) -> str:
    """The backward op called directly: with a spoiled saved tensor or gradient, a ValueError naming it; else
    gradients equal to the reference's vector-Jacobian product for the same cotangents."""
    detached = {k: (v.detach() if v is not None else None) for k, v in call.tensors.items()}
    plain = Call(call.sizes, detached, call.options, call.dtype)
    o, c, r = spec.direct(ops, plain)
    grad_o, grad_c = _cotangents(tuple(o.shape), call.dtype, backend.device, 2)
    c0 = _state(plain)
    saved = {"grad_o": grad_o, "grad_c": grad_c, "r": r, "c": c, "c0": c0}
    if data.draw(rarely()):
        name = data.draw(st.sampled_from(["grad_o", "grad_c", "r", "c"]))
        kind = data.draw(st.sampled_from(["rank", "dtype", "shape"]))
        other = torch.float32 if call.dtype == torch.float64 else torch.float64
        saved[name] = {"rank": saved[name][0], "dtype": saved[name].to(other),
                       "shape": saved[name].narrow(1, 0, 0)}[kind]
        _expect_value_error(lambda: spec.direct_backward(ops, plain, saved), name)
        return f"ValueError ({kind} of {name})"
    grads = spec.direct_backward(ops, plain, saved)
    ref_tensors = {k: (v.double().contiguous().cpu().requires_grad_() if k in call.grad_inputs else
                       (v.cpu() if v is not None else None)) for k, v in detached.items()}
    ref_c0 = ref_tensors["c0"] if ref_tensors["c0"] is not None else c0.double().cpu().requires_grad_()
    ref_o, ref_c = spec.reference({**ref_tensors, "c0": ref_c0}, call.options)
    wrt = ["x", "weight_r", "bias_r", "weight_t", "bias_t", "c0"]
    ref_inputs = [ref_tensors[k] if k != "c0" else ref_c0 for k in wrt]
    present = [i for i, t in enumerate(ref_inputs) if t is not None]
    ref_grads = torch.autograd.grad((ref_o, ref_c), [ref_inputs[i] for i in present],
                                    (grad_o.double().cpu(), grad_c.double().cpu()))
    for i, ref in zip(present, ref_grads):
        assert_close_rel(grads[i].cpu(), ref, call.dtype, f"direct backward: gradient of {wrt[i]}")
    return "matches reference"


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.name)
@pytest.mark.parametrize("backend", [p for p in DIRECT_PARAMS if p.values[0].name == "native"])
def test_through_torch_compile(spec: OpSpec, backend: Backend, capsys):
    """The public API traced by torch.compile (aot_eager: the fake kernels and autograd formula, then the real
    op): the same contract, empty and refused sizes included."""
    import torch._dynamo

    @fuzz_settings(4)
    @given(st.data())
    def check(data):
        call = spec.draw(data, backend.dtypes, backend.device)
        _draw_mistake(data, call, backend.device)
        torch._dynamo.reset()  # a fresh trace per example (and no recompile limit to run into)
        compiled = torch.compile(spec.layer, backend="aot_eager", dynamic=False)
        _record("compile", backend,
                check_public_call(spec, backend, call, lambda c: spec.run(c, backend.name, compiled)))

    check()
    _report(capsys, "compile", backend)


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
