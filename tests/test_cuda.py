"""The native CUDA kernels (csrc/cuda/) against the reference: values, gradients, dtypes, graphs, compile.

Every test here is marked ``cuda`` and skipped without a GPU. References are computed in float64 on the GPU
from the same (rounded) inputs, so the errors measure the kernels, not the input rounding (docs/design.md
section 5: float64 1e-10, float32 1e-5 with TF32 off, bf16/fp16 2e-2).
"""
import itertools

import pytest
import torch

from deeprnn_cuda import _native, cbm_layer
import helpers
from helpers import TOLERANCES, assert_close_rel, rel_err

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]

DEV = "cuda"
ACT_R = ["relu", "tanh", "identity"]
ACT_T = ["sigmoid", "relu"]
MERGE = ["mul", "add"]
TD = [None, "node", "sample"]
COMBOS = list(itertools.product(ACT_R, ACT_T, MERGE, TD))
COMBO_IDS = [f"{a}-{b}-{m}-td{t}" for a, b, m, t in COMBOS]
NAMES = ["o", "c", "grad_x", "grad_weight_r", "grad_bias_r", "grad_weight_t", "grad_bias_t", "grad_c0"]
SMALL = dict(T=4, B=3, C_in=5, C=6, H=7, W=5)  # C*H*W odd: the scalar (non-vectorized) kernels
ALIGNED = dict(T=3, B=2, C_in=4, C=8, H=8, W=8)  # every slice 16-byte aligned: the vectorized kernels
CANONICAL = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (C_in = C, H = W) at T = B = 16


def make_inputs(T, B, C_in, C, H, W, dtype, k_r=3, k_t=3, bias=True, seed=0):
    """Random CBM inputs on the GPU in ``dtype`` (identical values for every dtype)."""
    return helpers.make_inputs(T, B, C_in, C, H, W, k_r, k_t, dtype=dtype, bias=bias, seed=seed, device=DEV)


def as_double(inputs):
    """The same values in float64 (the reference's inputs)."""
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}


def make_td(kind, T, B, seed=1):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand((T,) if kind == "node" else (T, B), generator=g) < 0.5
    mask.view(-1)[0], mask.view(-1)[-1] = True, False  # both cases present
    return mask.to(DEV)


def run(inputs, backend, td_mask=None, seed=7, **opts):
    """Forward, then backward with random cotangents on both outputs: [o, c, grads of every given input]."""
    o, c = cbm_layer(**inputs, td_mask=td_mask, backend=backend, **opts)
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(o.shape, generator=g, dtype=torch.float64).to(DEV, o.dtype)
    gc = torch.randn(c.shape, generator=g, dtype=torch.float64).to(DEV, c.dtype)
    wrt = [t for t in inputs.values() if t is not None]
    grads = torch.autograd.grad((o * go).sum() + (c * gc).sum(), wrt)
    return [o, c, *grads]


def check_against_reference(inputs, td_mask, dtype, grad_tol=None, **opts):
    """Outputs within the docs/design.md tolerance of ``dtype``; gradients within ``grad_tol`` (default the same)."""
    got = run(inputs, "native", td_mask, **opts)
    ref = run(as_double(inputs), "reference", td_mask, **opts)
    for i, (name, a, b) in enumerate(zip(NAMES, got, ref)):
        tol = TOLERANCES[dtype] if i < 2 or grad_tol is None else grad_tol
        assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
        err = rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e} ({dtype}, {opts}, td={td_mask is not None})"


def graph_replays() -> int:
    """Replays of the native op's own CUDA graphs so far in this process (DEEPRNN_CUDA_GRAPHS=1)."""
    return int(torch.ops.deeprnn.cuda_graph_replays())


def combo_opts(combo):
    act_r, act_t, merge, td = combo
    return dict(act_r=act_r, act_t=act_t, merge=merge), td


def test_cuda_kernels_compiled():
    assert _native.is_available(), _native.unavailable_reason()
    assert _native.cuda_compiled(), "the extension was built without its CUDA kernels (CUDA_HOME unset?)"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("deeprnn::cbm_forward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("deeprnn::cbm_backward", "CUDA")


@pytest.mark.parametrize("shape", [SMALL, ALIGNED], ids=["small", "aligned"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_matches_reference(combo, dtype, shape):
    opts, td = combo_opts(combo)
    inputs = make_inputs(**shape, dtype=dtype)
    check_against_reference(inputs, make_td(td, shape["T"], shape["B"]), dtype, **opts)


@pytest.mark.parametrize("shape", [SMALL, ALIGNED], ids=["small", "aligned"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_half_matches_reference(combo, dtype, shape):
    opts, td = combo_opts(combo)
    inputs = make_inputs(**shape, dtype=dtype)
    # act_t = relu: relu'(G) has a kink at 0, and rounding G to 8 (bf16) or 11 (fp16) bits flips the gate of
    # the entries near 0 against the float64 reference, so the gradients (not the outputs) get a looser bound.
    # The verified CPU kernels show the same at these two shapes over every option and TD kind (measured
    # 2026-12, tests' seeds): bf16 gradient errors up to 7.0e-2 with relu, <= 8.8e-3 with sigmoid. This is the
    # one deliberate exception to docs/design.md section 5; outputs and every sigmoid case keep 2e-2.
    grad_tol = None if opts["act_t"] == "sigmoid" else (1e-1 if dtype == torch.bfloat16 else 5e-2)
    check_against_reference(inputs, make_td(td, shape["T"], shape["B"]), dtype, grad_tol=grad_tol, **opts)


@pytest.mark.parametrize("k_r,k_t,bias", [(1, 3, True), (5, 3, False), (3, 1, True), (1, 5, True)])
def test_kernel_sizes_and_no_bias(k_r, k_t, bias):
    inputs = make_inputs(**SMALL, dtype=torch.float64, k_r=k_r, k_t=k_t, bias=bias)
    got = run(inputs, "native", make_td("node", SMALL["T"], SMALL["B"]))
    ref = run(as_double(inputs), "reference", make_td("node", SMALL["T"], SMALL["B"]))
    for a, b in zip(got, ref):
        assert_close_rel(a, b, torch.float64)


@pytest.mark.parametrize("B", [1, 2])
def test_batch_one_and_single_step(B):
    for T in (1, 2):
        inputs = make_inputs(T=T, B=B, C_in=3, C=8, H=4, W=4, dtype=torch.float32)
        check_against_reference(inputs, None, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("C,HW", CANONICAL, ids=[f"C{c}-{h}x{h}" for c, h in CANONICAL])
@pytest.mark.parametrize(
    "combo", [("relu", "sigmoid", "mul", "node"), ("tanh", "relu", "add", "sample")], ids=["default-tdT", "alt-tdTB"]
)
def test_canonical_float32(C, HW, combo):
    opts, td = combo_opts(combo)
    inputs = make_inputs(T=16, B=16, C_in=C, C=C, H=HW, W=HW, dtype=torch.float32)
    check_against_reference(inputs, make_td(td, 16, 16), torch.float32, **opts)


@pytest.mark.slow
@pytest.mark.parametrize("C,HW", CANONICAL, ids=[f"C{c}-{h}x{h}" for c, h in CANONICAL])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_canonical_half(C, HW, dtype):
    inputs = make_inputs(T=16, B=16, C_in=C, C=C, H=HW, W=HW, dtype=dtype)
    check_against_reference(inputs, make_td("node", 16, 16), dtype)


@pytest.mark.parametrize("combo", [c for c in COMBOS if c[3] is None], ids=[i for c, i in zip(COMBOS, COMBO_IDS) if c[3] is None])
def test_gradcheck_float64(combo):
    opts, _ = combo_opts(combo)
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float64)
    names = list(inputs)

    def fn(*args):
        return cbm_layer(**dict(zip(names, args)), backend="native", **opts)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), fast_mode=combo[0] != "relu", atol=1e-7)


@pytest.mark.parametrize("td", ["node", "sample"])
def test_gradcheck_float64_td(td):
    """With Temporal Dropout the gradient into x is cut on purpose: x is held constant here."""
    inputs = make_inputs(T=3, B=2, C_in=2, C=3, H=4, W=5, dtype=torch.float64)
    x = inputs.pop("x").detach()
    mask = make_td(td, 3, 2)
    names = list(inputs)

    def fn(*args):
        return cbm_layer(x, **dict(zip(names, args)), td_mask=mask, backend="native")

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), atol=1e-7)


def test_deterministic():
    old = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        inputs = make_inputs(**ALIGNED, dtype=torch.float32)
        td = make_td("sample", ALIGNED["T"], ALIGNED["B"])
        first = run(inputs, "native", td)
        second = run(inputs, "native", td)
        for name, a, b in zip(NAMES, first, second):
            assert torch.equal(a, b), f"{name} differs between two identical calls"
    finally:
        torch.backends.cudnn.deterministic = old


def awkward_layouts(base):
    """The same values as ``base`` in awkward layouts: x with (T, B) swapped in memory, weights transposed in
    memory, c0 channels_last, bias_r strided."""
    x = base["x"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    weight_r = base["weight_r"].detach().transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    weight_t = base["weight_t"].detach().permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3).requires_grad_()
    bias_r = torch.stack([base["bias_r"].detach(), base["bias_r"].detach()], 1)[:, 0].requires_grad_()
    c0 = base["c0"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert not x.is_contiguous() and not weight_t.is_contiguous() and not c0.is_contiguous()
    return dict(x=x, weight_r=weight_r, bias_r=bias_r, weight_t=weight_t, bias_t=base["bias_t"], c0=c0)


def check_awkward_layouts(shape, dtype, td="node"):
    """Native on awkward layouts vs the float64 reference on contiguous copies of the same values."""
    base = make_inputs(**shape, dtype=dtype)
    mask = make_td(td, shape["T"], shape["B"])
    got = run(awkward_layouts(base), "native", mask)
    ref = run(as_double(base), "reference", mask)
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == dtype, name
        assert_close_rel(a, b, dtype, name)


@pytest.mark.parametrize("shape", [dict(T=3, B=2, C_in=4, C=8, H=6, W=6), ALIGNED, SMALL], ids=["c8", "aligned", "small"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_non_contiguous_inputs(dtype, shape):
    check_awkward_layouts(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("td", [None, "sample"])
def test_long_sequence(dtype, td):
    """T = 64: rounding drift over many steps (bf16) and a long recurrence, forward and backward."""
    inputs = make_inputs(T=64, B=2, C_in=4, C=8, H=8, W=8, dtype=dtype)
    check_against_reference(inputs, make_td(td, 64, 2), dtype)


def test_cotangent_layouts():
    """Backward with a non-contiguous cotangent (expanded, as autograd gives for .sum())."""
    inputs = make_inputs(**ALIGNED, dtype=torch.float64)
    o, c = cbm_layer(**inputs, backend="native")
    grads = torch.autograd.grad(o.sum() + c[-1].sum(), list(inputs.values()))
    dbl = as_double(inputs)
    ro, rc = cbm_layer(**dbl, backend="reference")
    ref = torch.autograd.grad(ro.sum() + rc[-1].sum(), list(dbl.values()))
    for a, b in zip(grads, ref):
        assert_close_rel(a, b, torch.float64)


def test_side_stream():
    inputs = make_inputs(**ALIGNED, dtype=torch.float32)
    expected = run(inputs, "native")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = run(inputs, "native")
    torch.cuda.current_stream().wait_stream(s)
    for name, a, b in zip(NAMES, got, expected):
        assert_close_rel(a, b, torch.float32, name)


def test_autocast():
    inputs = make_inputs(**ALIGNED, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            o, c = cbm_layer(**inputs, backend="native")
        assert o.dtype == dtype and c.dtype == dtype
        grads = torch.autograd.grad(o.float().sum() + c.float().sum(), list(inputs.values()))
        for g, v in zip(grads, inputs.values()):
            assert g.dtype == torch.float32 and g.shape == v.shape and torch.isfinite(g).all()
        dbl = as_double(inputs)
        ro, rc = cbm_layer(**dbl, backend="reference")
        ref = torch.autograd.grad(ro.sum() + rc.sum(), list(dbl.values()))
        assert_close_rel(o, ro, dtype, "o")
        assert_close_rel(c, rc, dtype, "c")
        for name, g, r in zip(NAMES[2:], grads, ref):
            assert_close_rel(g, r, dtype, name)


def test_cuda_graph_capture_of_forward_and_backward():
    """A user's torch.cuda.graph around forward + backward captures the plain loop and replays correctly."""
    shape = ALIGNED
    static = make_inputs(**shape, dtype=torch.float32)
    td = make_td("node", shape["T"], shape["B"])
    wrt = list(static.values())

    def step():
        o, c = cbm_layer(**static, td_mask=td, backend="native")
        loss = (o * o).sum() + c.sum()
        return [o, c, *torch.autograd.grad(loss, wrt)]

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    for seed in (3, 4):
        fresh = make_inputs(**shape, dtype=torch.float32, seed=seed)
        with torch.no_grad():
            for k in static:
                static[k].copy_(fresh[k])
        graph.replay()
        torch.cuda.synchronize()
        o, c = cbm_layer(**fresh, td_mask=td, backend="native")
        expected = [o, c, *torch.autograd.grad((o * o).sum() + c.sum(), list(fresh.values()))]
        for name, a, b in zip(NAMES, static_out, expected):
            assert_close_rel(a, b, torch.float32, f"replay seed {seed}: {name}")


@pytest.mark.parametrize("td", [None, "sample"])
def test_internal_cuda_graphs(monkeypatch, td):
    """DEEPRNN_CUDA_GRAPHS=1: warm-up call, capture, then replays on new data all match the eager loop."""
    monkeypatch.setenv("DEEPRNN_CUDA_GRAPHS", "1")
    shape = dict(T=5, B=2, C_in=4, C=8, H=7, W=7)
    mask = make_td(td, shape["T"], shape["B"])
    for seed in range(4):  # call 0 eager (warm-up), call 1 captures, calls 2-3 replay
        inputs = make_inputs(**shape, dtype=torch.float32, seed=seed)
        before = graph_replays()
        got = run(inputs, "native", mask)
        if seed >= 2:  # both graphs (forward, backward) captured by now: a silent eager fall-back shows here
            assert graph_replays() - before == 2, f"call {seed}: {graph_replays() - before} graph replays, not 2"
        monkeypatch.setenv("DEEPRNN_CUDA_GRAPHS", "0")
        before = graph_replays()
        expected = run(inputs, "native", mask)
        assert graph_replays() == before, "DEEPRNN_CUDA_GRAPHS=0 still replayed a graph"
        monkeypatch.setenv("DEEPRNN_CUDA_GRAPHS", "1")
        for name, a, b in zip(NAMES, got, expected):
            assert_close_rel(a, b, torch.float32, f"call {seed}: {name}")
    # Outputs of earlier calls are not overwritten by later replays.
    first = make_inputs(**shape, dtype=torch.float32, seed=10)
    o1, _ = cbm_layer(**first, backend="native")
    keep = o1.detach().clone()
    cbm_layer(**make_inputs(**shape, dtype=torch.float32, seed=11), backend="native")
    torch.cuda.synchronize()
    assert torch.equal(o1, keep)


def test_internal_cuda_graphs_under_user_capture(monkeypatch):
    """With DEEPRNN_CUDA_GRAPHS=1 inside a user's capture, the op falls back to the plain (capturable) loop."""
    monkeypatch.setenv("DEEPRNN_CUDA_GRAPHS", "1")
    static = make_inputs(**ALIGNED, dtype=torch.float32)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                cbm_layer(**static, backend="native")
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        before = graph_replays()
        with torch.cuda.graph(graph):
            o, c = cbm_layer(**static, backend="native")
        assert graph_replays() == before, "the op replayed its own graph inside the user's capture"
        fresh = make_inputs(**ALIGNED, dtype=torch.float32, seed=5)
        for k in static:
            static[k].copy_(fresh[k])
        graph.replay()
        torch.cuda.synchronize()
        eo, ec = cbm_layer(**fresh, backend="native")
    assert_close_rel(o, eo, torch.float32, "o")
    assert_close_rel(c, ec, torch.float32, "c")


def test_torch_compile_module():
    from deeprnn_cuda import CBM

    torch.manual_seed(0)
    model = CBM(4, 8, kernel_size=3, num_layers=2, backend="native").to(DEV)
    x = torch.randn(5, 2, 4, 8, 8, device=DEV)
    out, c_n = model(x)
    compiled = torch.compile(model)
    cout, cc_n = compiled(x)
    assert_close_rel(cout, out, torch.float32, "compiled output")
    for a, b in zip(cc_n, c_n):
        assert_close_rel(a, b, torch.float32, "compiled c_n")
    g_eager = torch.autograd.grad(out.sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(cout.sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        assert_close_rel(a, b, torch.float32, "compiled grads")


def test_torch_compile_fullgraph():
    inputs = make_inputs(**ALIGNED, dtype=torch.float32)

    def f(x, weight_r, bias_r, weight_t, bias_t, c0):
        o, c = cbm_layer(x, weight_r, bias_r, weight_t, bias_t, c0, backend="native")
        return o.sum() + c.sum()

    compiled = torch.compile(f, fullgraph=True)
    eager = f(**inputs)
    got = compiled(**inputs)
    assert_close_rel(got, eager, torch.float32, "loss")
    ge = torch.autograd.grad(eager, list(inputs.values()))
    gc = torch.autograd.grad(got, list(inputs.values()))
    for a, b in zip(gc, ge):
        assert_close_rel(a, b, torch.float32, "grads")


def test_opcheck():
    inputs = make_inputs(**SMALL, dtype=torch.float32)
    args = (inputs["x"], inputs["weight_r"], inputs["bias_r"], inputs["weight_t"], inputs["bias_t"], inputs["c0"],
            make_td("node", SMALL["T"], SMALL["B"]), 1, 0, 0)
    torch.library.opcheck(torch.ops.deeprnn.cbm_forward.default, args)
