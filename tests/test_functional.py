"""The cbm_layer contract on every backend: agreement with the reference, gradients, edge cases, errors."""
import itertools

import pytest
import torch

from deeprnn_cuda import cbm_layer
from deeprnn_cuda.reference import cbm_layer_ref
from helpers import assert_close_rel, make_inputs

# The compiled backends are required, not optional: a build without the extension fails here (and in
# tests/test_build.py, which says why) instead of shrinking these lists to the reference alone.
COMPILED = ["native"]
ACT_R = ["relu", "tanh", "identity"]
ACT_T = ["sigmoid", "relu"]
MERGE = ["mul", "add"]
TD = [None, "node", "sample"]


def make_td(kind, T, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    shape = (T,) if kind == "node" else (T, B)
    mask = torch.rand(*shape, generator=g) < 0.5
    mask.view(-1)[0], mask.view(-1)[-1] = True, False  # both cases present
    return mask


def run_with_grads(inputs, backend, td_mask=None, **opts):
    """Forward, then a backward with random cotangents on both outputs; returns outputs and all grads."""
    o, c = cbm_layer(**inputs, td_mask=td_mask, backend=backend, **opts)
    g = torch.Generator().manual_seed(7)
    go = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)
    gc = torch.randn(c.shape, generator=g, dtype=torch.float64).to(c.dtype)
    wrt = [t for t in inputs.values() if t is not None]
    grads = torch.autograd.grad((o * go).sum() + (c * gc).sum(), wrt)
    return [o, c, *grads]


def gradcheck_cbm(inputs, td_mask, backend, fast_mode=False, **opts):
    """float64 gradcheck of cbm_layer in every tensor argument.

    Temporal Dropout deliberately replaces the true gradient into x by a cut one, so with a TD mask x is
    held constant here (its TD gradient is checked against the reference elsewhere); the gradients of the
    weights, biases and c0 stay true derivatives and are checked.
    """
    names = [k for k in inputs if td_mask is None or k != "x"]
    fixed = {k: v.detach() for k, v in inputs.items() if k not in names}

    def fn(*tensors):
        return cbm_layer(**dict(zip(names, tensors)), **fixed, td_mask=td_mask, backend=backend, **opts)

    return torch.autograd.gradcheck(fn, tuple(inputs[k] for k in names), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=fast_mode)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("act_r,act_t,merge,td", list(itertools.product(ACT_R, ACT_T, MERGE, TD)))
def test_matches_reference_every_option(backend, act_r, act_t, merge, td):
    inputs = make_inputs(T=4, B=2, C_in=3, C=5, H=6, W=7)
    mask = make_td(td, 4, 2)
    opts = dict(act_r=act_r, act_t=act_t, merge=merge)
    got = run_with_grads(inputs, backend, mask, **opts)
    ref = run_with_grads(inputs, "reference", mask, **opts)
    names = ["o", "c", "dx", "dweight_r", "dbias_r", "dweight_t", "dbias_t", "dc0"]
    for n, a, b in zip(names, got, ref):
        assert_close_rel(a, b, torch.float64, n)


SHAPES = [
    # T, B, C_in, C, H, W, k_r, k_t
    (1, 1, 1, 1, 1, 1, 1, 1),
    (1, 3, 2, 4, 5, 5, 3, 3),
    (5, 1, 4, 2, 1, 9, 3, 5),
    (3, 2, 6, 3, 7, 4, 5, 5),
    (2, 2, 3, 3, 8, 8, 7, 7),
    (3, 2, 2, 5, 6, 5, 1, 3),
    (4, 3, 5, 2, 3, 3, 7, 1),
]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_c0", [True, False])
@pytest.mark.parametrize("td", TD)
def test_matches_reference_shapes(backend, shape, with_c0, td):
    T, B, C_in, C, H, W, k_r, k_t = shape
    inputs = make_inputs(T, B, C_in, C, H, W, k_r, k_t, seed=sum(shape))
    if not with_c0:
        inputs["c0"] = None
    mask = make_td(td, T, B)
    for n, a, b in zip("o c dx dwr dbr dwt dbt dc0".split(), run_with_grads(inputs, backend, mask),
                       run_with_grads(inputs, "reference", mask)):
        assert_close_rel(a, b, torch.float64, n)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_against_float64_reference(backend, dtype):
    """The kernel in ``dtype`` vs the float64 reference on the same (rounded) inputs."""
    inputs = make_inputs(T=5, B=2, C_in=4, C=6, H=8, W=8, dtype=dtype, seed=3)
    inputs64 = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    got = run_with_grads(inputs, backend)
    ref = run_with_grads(inputs64, "reference")
    for n, a, b in zip("o c dx dwr dbr dwt dbt dc0".split(), got, ref):
        assert a.dtype == dtype, n
        assert_close_rel(a, b, dtype, n)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
@pytest.mark.parametrize("act_r,act_t,merge", [("relu", "sigmoid", "mul"), ("tanh", "sigmoid", "mul"),
                                               ("identity", "relu", "add")])
@pytest.mark.parametrize("td", TD)
def test_gradcheck(backend, act_r, act_t, merge, td):
    # Small magnitudes keep relu kinks away from the finite-difference stencil.
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=3, k_r=3, k_t=3, seed=11)
    assert gradcheck_cbm(inputs, make_td(td, 3, 2), backend, act_r=act_r, act_t=act_t, merge=merge)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_full_gradcheck_all_options_small(backend):
    """Every act/merge/TD combination through gradcheck (fast mode: random projections of the Jacobian)."""
    for act_r, act_t, merge, td in itertools.product(ACT_R, ACT_T, MERGE, TD):
        inputs = make_inputs(T=2, B=2, C_in=1, C=2, H=3, W=2, seed=5)
        assert gradcheck_cbm(inputs, make_td(td, 2, 2), backend, fast_mode=True, act_r=act_r, act_t=act_t,
                             merge=merge), (
            act_r, act_t, merge, td)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("which", ["o", "final_state"])
def test_no_bias_and_single_output_gradients(backend, which):
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=4, bias=False)
    wrt = [inputs[k] for k in ("x", "weight_r", "weight_t", "c0")]

    def loss(o, c):
        return o.sum() if which == "o" else (c[-1] ** 2).sum()

    # The final state does not depend on weight_r: its gradient is zero (materialized).
    got = torch.autograd.grad(loss(*cbm_layer(**inputs, backend=backend)), wrt, materialize_grads=True)
    ref = torch.autograd.grad(loss(*cbm_layer_ref(**inputs)), wrt, materialize_grads=True)
    for a, b in zip(got, ref):
        assert_close_rel(a, b, torch.float64)


@pytest.mark.parametrize("backend", ["reference", "auto"] + COMPILED)
def test_empty_sequence(backend):
    inputs = make_inputs(T=0, B=2, C_in=3, C=4, H=5, W=5)
    o, c = cbm_layer(**inputs, backend=backend)
    assert o.shape == c.shape == (0, 2, 4, 5, 5)


def test_td_does_not_change_forward_and_cuts_x_gradient_through_t():
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=4)
    o1, c1 = cbm_layer(**inputs, backend="reference")
    o2, c2 = cbm_layer(**inputs, td_mask=torch.ones(3, dtype=torch.bool), backend="reference")
    assert torch.equal(o1, o2) and torch.equal(c1, c2)
    # With every node dropped and R's output unused (merge=add, loss on c only), nothing reaches x.
    o, c = cbm_layer(**inputs, td_mask=torch.ones(3, dtype=torch.bool), merge="add", backend="auto")
    (gx,) = torch.autograd.grad(c.sum(), [inputs["x"]])
    assert gx.abs().max() == 0
    (gw,) = torch.autograd.grad(cbm_layer(**inputs, td_mask=torch.ones(3, dtype=torch.bool))[1].sum(),
                                [inputs["weight_t"]])
    assert gw.abs().max() > 0  # W_t still learns


def test_opcheck():
    from torch.library import opcheck

    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float32)
    args = (inputs["x"], inputs["weight_r"], inputs["bias_r"], inputs["weight_t"], inputs["bias_t"], inputs["c0"])
    for td in (None, make_td("sample", 3, 2)):
        opcheck(torch.ops.deeprnn.cbm_forward.default, args + (td, 1, 0, 0))
        opcheck(torch.ops.deeprnn.cbm_forward.default, args[:2] + (None,) + args[3:4] + (None,) + args[5:] + (td, 2, 1, 1))
    o, c, r = torch.ops.deeprnn.cbm_forward(*args, None, 1, 0, 0)
    d = [t.detach() for t in (inputs["x"], inputs["weight_r"], inputs["weight_t"], inputs["c0"], r, c)]
    opcheck(torch.ops.deeprnn.cbm_backward.default,
            (torch.randn_like(o), torch.randn_like(c), *d, make_td("node", 3, 2), 1, 0, 0),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph_through_native_op():
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=4, dtype=torch.float32)

    def step(x, weight_r, bias_r, weight_t, bias_t, c0):
        o, c = cbm_layer(x, weight_r, bias_r, weight_t, bias_t, c0, backend="native")
        return (o * o).sum() + c[-1].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(**inputs)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    loss_ref = step(**inputs)
    grads_ref = torch.autograd.grad(loss_ref, list(inputs.values()))
    assert_close_rel(loss, loss_ref, torch.float32)
    for a, b in zip(grads, grads_ref):
        assert_close_rel(a, b, torch.float32)


def test_native_directly_with_bad_shapes_raises_value_error():
    x = torch.randn(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="weight_t"):
        torch.ops.deeprnn.cbm_forward(x, torch.randn(2, 3, 3, 3), None, torch.randn(2, 4, 3, 3), None,
                                      torch.randn(1, 2, 4, 4), None, 1, 0, 0)


@pytest.mark.parametrize("backend", COMPILED)
def test_multithreaded_epilogue_matches_reference(backend):
    """Large enough for at::parallel_for to split the step over threads and across batch boundaries."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_inputs(T=2, B=3, C_in=2, C=9, H=40, W=41, seed=13)
        for n, a, b in zip("o c dx dwr dbr dwt dbt dc0".split(), run_with_grads(inputs, backend),
                           run_with_grads(inputs, "reference")):
            assert_close_rel(a, b, torch.float64, n)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_autocast_cpu_bfloat16(backend):
    """float32 parameters under CPU autocast: the layer runs in bf16, like the convolutions it is made of."""
    inputs = make_inputs(T=3, B=2, C_in=3, C=4, H=5, W=5, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, c = cbm_layer(**inputs, backend=backend)
    assert o.dtype == c.dtype == torch.bfloat16
    o.float().sum().backward()
    assert inputs["weight_t"].grad is not None and inputs["weight_t"].grad.dtype == torch.float32
    ref, _ = cbm_layer_ref(**{k: v.detach().double() for k, v in inputs.items()})
    assert_close_rel(o, ref, torch.bfloat16)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("which", ["bias_r", "bias_t"])
@pytest.mark.parametrize("td", [None, "sample"])
def test_single_bias_matches_reference(backend, which, td):
    """Only one of the two biases given: the op must not mix them up or drop the other (the reference
    adds each to its own convolution)."""
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=5, seed=17)
    inputs["bias_t" if which == "bias_r" else "bias_r"] = None
    mask = make_td(td, 3, 2)
    for opts in (dict(), dict(act_r="tanh", act_t="relu", merge="add")):
        for n, a, b in zip(["o", "c", "dx", "dweight_r", f"d{which}", "dweight_t", "dc0"],
                           run_with_grads(inputs, backend, mask, **opts),
                           run_with_grads(inputs, "reference", mask, **opts)):
            assert_close_rel(a, b, torch.float64, f"{n} ({opts})")


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_autocast_leaves_float64_alone(backend):
    """Autocast never touches float64 (like conv2d): float64 inputs under CPU autocast give float64 results
    equal to the reference outside autocast, gradients included."""
    inputs = make_inputs(T=3, B=2, C_in=3, C=4, H=5, W=5, seed=19)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_with_grads(inputs, backend)
    ref = run_with_grads(inputs, "reference")
    for n, a, b in zip("o c dx dwr dbr dwt dbt dc0".split(), got, ref):
        assert a.dtype == torch.float64, f"{n}: autocast cast float64 to {a.dtype}"
        assert_close_rel(a, b, torch.float64, n)
