"""The convlstm_layer / convgru_layer contract: the fused native ops against the per-step references (values and
every gradient), gradcheck, opcheck, torch.compile, autocast, the inference path, edge cases and errors."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cell_helpers import BIAS_CASES, CELLS, layer, make_cell_inputs, names, outputs, run_with_grads
from deeprnn_cuda import _native, cbm_layer, convgru_layer_ref, convlstm_layer_ref
from helpers import assert_close_rel, make_inputs

COMPILED = ["native"] if _native.is_available() else []
needs_native = pytest.mark.skipif(not COMPILED, reason="native extension not built")
CASES = [(cell, bias) for cell in CELLS for bias in BIAS_CASES[cell]]


def reference(cell):
    return convlstm_layer_ref if cell == "convlstm" else convgru_layer_ref


# ----------------------------------------------------------------------------- the references themselves


def test_convlstm_reference_matches_hand_computed_step():
    """One 1x1-kernel step written out gate by gate (independent of the reference's split/cat)."""
    inputs = make_cell_inputs("convlstm", T=1, B=2, C_in=2, C=3, H=2, W=2, k=1)
    x, w, b, h0, c0 = (inputs[k].detach() for k in ("x", "weight", "bias", "h0", "c0"))
    z = torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], torch.cat([x[0], h0], 1)) + b.view(1, -1, 1, 1)
    i, f, o, g = z[:, 0:3].sigmoid(), z[:, 3:6].sigmoid(), z[:, 6:9].sigmoid(), z[:, 9:12].tanh()
    c = f * c0 + i * g
    h, c_ref = convlstm_layer_ref(x, w, b, h0, c0)
    assert_close_rel(c_ref[0], c, torch.float64)
    assert_close_rel(h[0], o * c.tanh(), torch.float64)


def test_convgru_reference_matches_hand_computed_step():
    inputs = make_cell_inputs("convgru", T=1, B=2, C_in=2, C=3, H=2, W=2, k=1)
    x, wx, bx, wh, bh, h0 = (inputs[k].detach() for k in ("x", "weight_x", "bias_x", "weight_h", "bias_h", "h0"))

    def lin(w, v):
        return torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], v)

    a = lin(wx, x[0]) + bx.view(1, -1, 1, 1)
    u = lin(wh[:6], h0) + bh[:6].view(1, -1, 1, 1)
    z, r = (a[:, :3] + u[:, :3]).sigmoid(), (a[:, 3:6] + u[:, 3:6]).sigmoid()
    n = (a[:, 6:] + lin(wh[6:], r * h0) + bh[6:].view(1, -1, 1, 1)).tanh()
    assert_close_rel(convgru_layer_ref(x, wx, bx, wh, bh, h0)[0], (1 - z) * n + z * h0, torch.float64)


# ----------------------------------------------------------------------------- native against the reference


@needs_native
@pytest.mark.parametrize("cell,bias", CASES)
@pytest.mark.parametrize("shape", [dict(T=4, B=2, C_in=3, C=5, H=6, W=7), dict(T=3, B=1, C_in=1, C=2, H=5, W=3, k=5),
                                   dict(T=2, B=3, C_in=4, C=3, H=1, W=9, k=1)])
def test_float64_values_and_gradients_match_reference(cell, bias, shape):
    inputs = make_cell_inputs(cell, **shape, bias=bias)
    for n, a, b in zip(names(cell, inputs), run_with_grads(cell, inputs, "native"),
                       run_with_grads(cell, inputs, "reference")):
        assert_close_rel(a, b, torch.float64, f"{cell} {n}")


@needs_native
def test_convgru_kernel_sizes_may_differ():
    inputs = make_cell_inputs("convgru", T=3, B=2, C_in=2, C=3, H=5, W=6, k=1, k_h=5)
    for n, a, b in zip(names("convgru", inputs), run_with_grads("convgru", inputs, "native"),
                       run_with_grads("convgru", inputs, "reference")):
        assert_close_rel(a, b, torch.float64, n)


@needs_native
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("loss_on", ["all", "h"])
def test_chunked_and_multithreaded_match_reference(cell, loss_on):
    """Large enough for the CPU driver's default chunk (2^18 elements) to hold two ConvGRU steps (chunks of
    steps) and not two ConvLSTM ones (its per-step concatenated form, tests/test_cell_chunks.py), and for
    the epilogues to cut every step into pieces run on two threads (12800 elements per batch entry: six whole
    pieces of 2048 and a short seventh), across chunk, batch and piece boundaries. With the loss on h only, the
    c gradient reaches the kernels as a broadcast zero, read at every piece's offset."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_cell_inputs(cell, T=8, B=3, C_in=2, C=8, H=40, W=40, seed=3)
        if loss_on == "all":
            pairs = zip(names(cell, inputs), run_with_grads(cell, inputs, "native"),
                        run_with_grads(cell, inputs, "reference"))
        else:
            wrt = [v for v in inputs.values() if v is not None]
            got = torch.autograd.grad(outputs(cell, layer(cell)(**inputs, backend="native"))[0].square().sum(), wrt)
            ref = torch.autograd.grad(outputs(cell, reference(cell)(**inputs))[0].square().sum(), wrt)
            pairs = zip(range(len(wrt)), got, ref)
        for n, a, b in pairs:
            assert_close_rel(a, b, torch.float64, n)
    finally:
        torch.set_num_threads(threads)


@needs_native
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_against_float64_reference(cell, dtype):
    inputs = make_cell_inputs(cell, T=4, B=2, C_in=3, C=4, H=6, W=5, dtype=dtype)
    ref_inputs = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    got, ref = run_with_grads(cell, inputs, "native"), run_with_grads(cell, ref_inputs, "reference")
    for n, a, b in zip(names(cell, inputs), got, ref):
        assert a.dtype == dtype, n
        assert_close_rel(a, b, dtype, f"{cell} {n} {dtype}")


@needs_native
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("loss_on", ["h", "last_c_or_h"])
def test_gradients_of_one_output_only(cell, loss_on):
    """A loss on one output leaves the others' gradients None: the backward gets broadcast zeros for them."""
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=3, H=4, W=4)
    wrt = [v for v in inputs.values() if v is not None]

    def loss(outs):
        return outs[0].sum() if loss_on == "h" else (outs[-1][-1] ** 2).sum()

    got = torch.autograd.grad(loss(outputs(cell, layer(cell)(**inputs, backend="native"))), wrt)
    ref = torch.autograd.grad(loss(outputs(cell, reference(cell)(**inputs))), wrt)
    for a, b in zip(got, ref):
        assert_close_rel(a, b, torch.float64)


@needs_native
@pytest.mark.parametrize("cell,bias", CASES)
def test_gradcheck(cell, bias):
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=2, H=3, W=4, bias=bias)
    keys = [k for k, v in inputs.items() if v is not None]

    def fn(*tensors):
        return layer(cell)(**dict(zip(keys, tensors)), **{k: None for k, v in inputs.items() if v is None},
                           backend="native")

    assert torch.autograd.gradcheck(fn, tuple(inputs[k] for k in keys), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference", "auto"] + COMPILED)
def test_empty_sequence(cell, backend):
    inputs = make_cell_inputs(cell, T=0, B=2, C_in=3, C=4, H=5, W=5)
    for o in outputs(cell, layer(cell)(**inputs, backend=backend)):
        assert o.shape == (0, 2, 4, 5, 5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_default_states_are_zeros(cell, backend):
    inputs = make_cell_inputs(cell, T=2, B=2, C_in=2, C=3, H=4, W=4, states=False)
    got = outputs(cell, layer(cell)(**inputs, backend=backend))
    zeros = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    states = dict(h0=zeros, c0=zeros) if cell == "convlstm" else dict(h0=zeros)
    ref = outputs(cell, reference(cell)(**inputs, **states))
    for a, b in zip(got, ref):
        assert_close_rel(a, b, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_autocast_cpu_bfloat16(cell, backend):
    """float32 parameters under CPU autocast: the layer runs in bf16, like the convolutions it is made of."""
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=3, C=4, H=5, W=5, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = outputs(cell, layer(cell)(**inputs, backend=backend))
    assert all(o.dtype == torch.bfloat16 for o in outs)
    outs[0].float().sum().backward()
    w = inputs["weight"] if cell == "convlstm" else inputs["weight_h"]
    assert w.grad is not None and w.grad.dtype == torch.float32
    ref = outputs(cell, reference(cell)(**{k: v.detach().double() if v is not None else None
                                            for k, v in inputs.items()}))
    for a, b in zip(outs, ref):
        assert_close_rel(a, b, torch.bfloat16)


# ----------------------------------------------------------------------------- the inference path


class OpRecorder(TorchDispatchMode):
    """Records the names of the deeprnn:: ops dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "deeprnn":
            self.ops.append(func._opname)
        return func(*args, **(kwargs or {}))


def _call(cell, inputs):
    if cell == "cbm":
        return list(cbm_layer(**inputs, backend="native"))
    return outputs(cell, layer(cell)(**inputs, backend="native"))


def _inputs(cell, requires_grad=True):
    if cell == "cbm":
        inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=5, W=4)
    else:
        inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=3, H=5, W=4)
    return {k: (v.detach().requires_grad_(requires_grad) if v is not None else None) for k, v in inputs.items()}


@needs_native
@pytest.mark.parametrize("cell", ("cbm",) + CELLS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_input_requires_grad"])
def test_without_autograd_the_inference_op_runs_and_agrees(cell, mode):
    """Without autograd the forward keeps nothing for backward (CBM's r, the cells' gates): the *_inference op
    runs instead of the *_forward op, with the same results."""
    with OpRecorder() as rec:
        trained = _call(cell, _inputs(cell))
    assert rec.ops == [f"{cell}_forward"]
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode)
    with OpRecorder() as rec:
        if context is None:
            inferred = _call(cell, _inputs(cell, requires_grad=False))
        else:
            with context():
                inferred = _call(cell, _inputs(cell))
    assert rec.ops == [f"{cell}_inference"]
    for a, b in zip(inferred, trained):
        assert torch.equal(a, b.detach())


class BackwardArgs(TorchDispatchMode):
    """Keeps the arguments of the deeprnn:: backward ops dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "deeprnn" and func._opname.endswith("_backward"):
            self.calls[func._opname] = args
        return func(*args, **(kwargs or {}))


@needs_native
def test_unused_outputs_reach_backward_as_broadcast_zeros():
    """A loss on h only leaves the cell-state sequence without gradient: the backward op gets a broadcast zero
    (all strides 0), not a zero buffer the size of the activations."""
    inputs = _inputs("convlstm")
    with BackwardArgs() as spy:
        outputs("convlstm", layer("convlstm")(**inputs, backend="native"))[0].sum().backward()
    grad_c = spy.calls["convlstm_backward"][1]
    assert grad_c.stride() == (0,) * 5, grad_c.stride()


@needs_native
@pytest.mark.parametrize("cell", CELLS)
def test_gates_are_not_differentiable(cell):
    """The forward ops return their gates only for their backward: no gradient may flow into them (it would be
    dropped silently), so autograd neither tracks them nor builds zero gradients for them."""
    inputs = _inputs(cell)
    args = [inputs[k] for k in inputs]
    gates = (torch.ops.deeprnn.convlstm_forward if cell == "convlstm" else torch.ops.deeprnn.convgru_forward)(*args)[-1]
    assert not gates.requires_grad


# ----------------------------------------------------------------------------- the ops as torch.library ops


@needs_native
def test_opcheck():
    from torch.library import opcheck

    ops = torch.ops.deeprnn
    for bias in ("both", "none"):
        lstm = [v.detach() if v is not None else None for v in
                make_cell_inputs("convlstm", T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float32, bias=bias).values()]
        opcheck(ops.convlstm_inference.default, tuple(lstm))  # not differentiable: inputs without grad
        opcheck(ops.convlstm_inference.default, tuple(lstm) + (False,))  # only the final c
        lstm[0].requires_grad_()
        opcheck(ops.convlstm_forward.default, tuple(lstm))
        gru = [v.detach() if v is not None else None for v in
               make_cell_inputs("convgru", T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float32, bias=bias).values()]
        opcheck(ops.convgru_inference.default, tuple(gru))
        gru[0].requires_grad_()
        opcheck(ops.convgru_forward.default, tuple(gru))
    backward_tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    x, w, b, h0, c0 = (t.detach() for t in lstm[:1] + lstm[1:2] + [torch.zeros(12)] + lstm[3:])
    h, c, gates = ops.convlstm_forward(x, w, b, h0, c0)
    opcheck(ops.convlstm_backward.default, (torch.randn_like(h), torch.randn_like(c), x, w, h0, c0, h, c, gates),
            test_utils=backward_tests)
    x, wx, _, wh, _, h0 = (t.detach() if t is not None else None for t in gru)
    h, gates = ops.convgru_forward(x, wx, None, wh, None, h0)
    opcheck(ops.convgru_backward.default, (torch.randn_like(h), x, wx, wh, h0, h, gates), test_utils=backward_tests)
    cbm = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float32)
    args = tuple(v.detach() for v in cbm.values())
    opcheck(ops.cbm_inference.default, args + (1, 0, 0))
    opcheck(ops.cbm_inference.default, args + (1, 0, 0, False))
    opcheck(ops.cbm_inference.default, (args[0], args[1], None, args[3], None, args[5], 2, 1, 1))


@needs_native
@pytest.mark.parametrize("cell", CELLS)
def test_torch_compile_fullgraph(cell):
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=3, H=4, W=4, dtype=torch.float32)

    def step(**kw):
        outs = outputs(cell, layer(cell)(**kw, backend="native"))
        return sum((o * o).sum() for o in outs)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    wrt = list(inputs.values())
    loss = compiled(**inputs)
    grads = torch.autograd.grad(loss, wrt)
    loss_ref = step(**inputs)
    for a, b in zip([loss, *grads], [loss_ref, *torch.autograd.grad(loss_ref, wrt)]):
        assert_close_rel(a, b, torch.float32)
    with torch.no_grad():
        assert_close_rel(compiled(**inputs), loss_ref, torch.float32)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cell,change,match",
    [
        ("convlstm", dict(weight=torch.randn(12, 4, 3, 3)), r"weight must have shape \(4C, C_in \+ C, k, k\)"),
        ("convlstm", dict(weight=torch.randn(12, 5, 2, 2)), "square odd kernel"),
        ("convlstm", dict(bias=torch.randn(3)), r"bias must have shape \(4C=12,\)"),
        ("convlstm", dict(h0=torch.randn(2, 3, 4, 5)), r"h0 must have shape \(B=2, C=3, H=4, W=4\)"),
        ("convlstm", dict(c0=torch.randn(2, 3, 4)), r"c0 must have shape"),
        ("convlstm", dict(x=torch.randn(3, 2, 2, 4)), r"x must have shape \(T, B, C_in, H, W\)"),
        ("convlstm", dict(weight=torch.randn(12, 5, 3, 3, dtype=torch.float32)), "weight must have x's dtype"),
        ("convgru", dict(weight_x=torch.randn(9, 3, 3, 3)), r"weight_x must have shape \(3C=9, C_in=2"),
        ("convgru", dict(weight_h=torch.randn(9, 4, 3, 3)), r"weight_h must have shape \(3C, C, k_h, k_h\)"),
        ("convgru", dict(weight_h=None), "weight_h is required"),
        ("convgru", dict(bias_h=torch.randn(6)), r"bias_h must have shape \(3C=9,\)"),
        ("convgru", dict(h0=torch.randn(1, 3, 4, 4)), r"h0 must have shape \(B=2, C=3"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(cell, change, match):
    inputs = {k: (v.detach() if v is not None else None)
              for k, v in make_cell_inputs(cell, T=3, B=2, C_in=2, C=3, H=4, W=4).items()}
    with pytest.raises(ValueError, match=match):
        layer(cell)(**{**inputs, **change})


@needs_native
def test_native_ops_directly_with_bad_shapes_raise_value_error():
    x = torch.randn(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.deeprnn.convlstm_forward(x, torch.randn(8, 4, 3, 3), None, torch.randn(1, 2, 4, 4),
                                           torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="h0"):
        torch.ops.deeprnn.convgru_forward(x, torch.randn(6, 3, 3, 3), None, torch.randn(6, 2, 3, 3), None,
                                          torch.randn(2, 2, 4, 4))


@pytest.mark.parametrize("cell", CELLS)
def test_unknown_backend_refused_and_triton_backend_wired(cell):
    """backend="triton" reaches the Triton cell kernels through the public op (under the interpreter here) and
    agrees with the reference, values and every gradient."""
    from deeprnn_cuda import triton as triton_backend

    inputs = make_cell_inputs(cell, T=2, B=1, C_in=2, C=3, H=4, W=4)
    with pytest.raises(ValueError, match="backend must be one of"):
        layer(cell)(**inputs, backend="cudnn")
    if not (triton_backend.is_available() and triton_backend.interpreter_active()):
        pytest.skip("the Triton interpreter is not active here")
    got, ref = run_with_grads(cell, inputs, "triton"), run_with_grads(cell, inputs, "reference")
    for name, a, b in zip(names(cell, inputs), got, ref):
        assert_close_rel(a, b, torch.float64, name)


