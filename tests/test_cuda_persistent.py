"""The persistent CUDA recurrence kernels (csrc/cuda/cbm_persistent_*.cu) against the reference, on a GPU.

``DEEPRNN_CUDA_PERSISTENT=1`` makes the native CUDA op run all T steps of the recurrence (forward and backward)
in one cooperative launch wherever the kernels can run; ``auto`` measures them against the per-step loop once
per shape. Every test checks the launch counter, so a silent fall-back to the loop cannot pass for the kernel.
The tile code itself is also checked without a GPU, by host emulation (tests/test_persistent_tiles.py).
"""
import pytest
import torch

from deeprnn_cuda import CBM, cbm_layer
from helpers import TOLERANCES, assert_close_rel, rel_err
from test_cuda import (COMBO_IDS, COMBOS, NAMES, as_double, check_against_reference, check_awkward_layouts,
                       combo_opts, make_inputs, make_td, run)

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


def launches() -> int:
    return int(torch.ops.deeprnn.cuda_persistent_launches())


@pytest.fixture
def persistent(monkeypatch):
    monkeypatch.setenv("DEEPRNN_CUDA_PERSISTENT", "1")
    before = launches()
    yield
    assert launches() > before, "the persistent kernels never ran (fell back to the per-step loop)"


# C = 32: tensor cores for bf16 / fp16 (C % 16 == 0); C = 40: the FMA product, two channel slices, ragged chunk.
SHAPES = {"c32": dict(T=4, B=3, C_in=5, C=32, H=7, W=5), "c40": dict(T=3, B=2, C_in=4, C=40, H=6, W=6)}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_matches_reference(persistent, combo, dtype, shape):
    opts, td = combo_opts(combo)
    s = SHAPES[shape]
    check_against_reference(make_inputs(**s, dtype=dtype), make_td(td, s["T"], s["B"]), dtype, **opts)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("combo", COMBOS[::3], ids=COMBO_IDS[::3])
def test_half_matches_reference(persistent, combo, dtype, shape):
    opts, td = combo_opts(combo)
    s = SHAPES[shape]
    grad_tol = None if opts["act_t"] == "sigmoid" else (1e-1 if dtype == torch.bfloat16 else 5e-2)  # see test_cuda
    check_against_reference(make_inputs(**s, dtype=dtype), make_td(td, s["T"], s["B"]), dtype, grad_tol=grad_tol,
                            **opts)


def test_tf32_tensor_cores(persistent):
    """float32 with TF32 allowed takes the TF32 WMMA product: within the TF32 tolerance (1e-3)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        inputs = make_inputs(T=4, B=2, C_in=16, C=64, H=9, W=9, dtype=torch.float32)
        got, ref = run(inputs, "native"), run(as_double(inputs), "reference")
        for name, a, b in zip(NAMES, got, ref):
            assert rel_err(a, b) <= 1e-3, name
    finally:
        torch.backends.cudnn.allow_tf32 = old


@pytest.mark.slow
@pytest.mark.parametrize("C,HW", [(64, 56), (128, 28), (256, 14)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_canonical(persistent, C, HW, dtype):
    if dtype == torch.float32 and C == 256:
        pytest.skip("C = 256 float32: the weight slice exceeds shared memory (the loop runs it)")
    inputs = make_inputs(T=16, B=16, C_in=C, C=C, H=HW, W=HW, dtype=dtype)
    check_against_reference(inputs, make_td("node", 16, 16), dtype)


def test_gradcheck_float64(persistent):
    inputs = make_inputs(T=3, B=2, C_in=2, C=16, H=4, W=3, dtype=torch.float64)
    names = list(inputs)

    def f(*tensors):
        return cbm_layer(**dict(zip(names, tensors)), backend="native", act_r="tanh")

    assert torch.autograd.gradcheck(f, tuple(inputs.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_falls_back_where_it_cannot_run(monkeypatch):
    """C = 512 float32 at 3x3: the weight slice cannot fit in shared memory, so the loop runs (and is right)."""
    monkeypatch.setenv("DEEPRNN_CUDA_PERSISTENT", "1")
    before = launches()
    inputs = make_inputs(T=2, B=1, C_in=8, C=512, H=3, W=3, dtype=torch.float32)
    check_against_reference(inputs, None, torch.float32)
    assert launches() == before


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    """Bitwise comparisons need cuDNN's deterministic algorithms: the weight gradients are cuDNN convolutions."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def test_deterministic(persistent, deterministic_cudnn):
    inputs = make_inputs(T=5, B=2, C_in=4, C=48, H=8, W=8, dtype=torch.float32)
    first, second = run(inputs, "native"), run(inputs, "native")
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_auto_measures_once_and_matches(monkeypatch, deterministic_cudnn):
    """auto: the first call times both paths (the winner's results stand), later calls repeat the winner."""
    monkeypatch.setenv("DEEPRNN_CUDA_PERSISTENT", "auto")
    inputs = make_inputs(T=6, B=4, C_in=8, C=32, H=14, W=14, dtype=torch.float32)
    before = launches()
    first = run(inputs, "native")
    measured = launches() - before
    assert measured >= 8, "the first call did not time the persistent kernels (4 runs per direction)"
    mid = launches()
    second = run(inputs, "native")
    assert launches() - mid in (0, 2), "a later call measured again"
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name}: the first call's results are not the winner's"
    ref = run(as_double(inputs), "reference")
    for name, a, b in zip(NAMES, second, ref):
        assert rel_err(a, b) <= TOLERANCES[torch.float32], name


def test_cuda_graph_capture(persistent):
    """The cooperative launches can be captured in a CUDA graph and replayed on new data."""
    shape = dict(T=4, B=2, C_in=4, C=32, H=8, W=8)
    static = make_inputs(**shape, dtype=torch.float32)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                cbm_layer(**static, backend="native")
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o, c = cbm_layer(**static, backend="native")
        fresh = make_inputs(**shape, dtype=torch.float32, seed=3)
        for k in static:
            static[k].copy_(fresh[k])
        graph.replay()
        torch.cuda.synchronize()
        eo, ec = cbm_layer(**as_double(fresh), backend="reference")
    assert_close_rel(o, eo, torch.float32, "o")
    assert_close_rel(c, ec, torch.float32, "c")


def test_deep_stack_training_step(persistent):
    """A 15-layer CBM stack, forward and backward, agrees with the reference backend."""
    torch.manual_seed(0)
    model = CBM(16, 32, kernel_size=3, num_layers=15, shortcut_every=2, backend="native").to("cuda").double()
    x = torch.randn(4, 2, 16, 10, 10, device="cuda", dtype=torch.float64)
    out, _ = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    model.backend = "reference"
    ref_out, _ = model(x)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), list(model.parameters()))
    assert_close_rel(out, ref_out, torch.float64, "out")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close_rel(a, b, torch.float64, f"grad {i}")


# Half precision meets Temporal Dropout (COMBOS[::3] above picks td=None only); sigmoid gates, so the docs/design.md
# tolerance holds for the gradients too.
HALF_TD = [("relu", "sigmoid", "mul"), ("tanh", "sigmoid", "add")]


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("td", ["node", "sample"])
@pytest.mark.parametrize("acts", HALF_TD, ids=["-".join(a) for a in HALF_TD])
def test_half_with_td_matches_reference(persistent, acts, td, dtype, shape):
    s = SHAPES[shape]
    opts = dict(zip(("act_r", "act_t", "merge"), acts))
    check_against_reference(make_inputs(**s, dtype=dtype), make_td(td, s["T"], s["B"]), dtype, **opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_long_sequence(persistent, dtype):
    """T = 64: 64 grid barriers per direction, bf16 drift over a long recurrence."""
    inputs = make_inputs(T=64, B=2, C_in=4, C=32, H=6, W=6, dtype=dtype)
    check_against_reference(inputs, make_td("sample", 64, 2), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_non_contiguous_inputs(persistent, dtype):
    check_awkward_layouts(dict(T=3, B=2, C_in=4, C=32, H=6, W=6), dtype)
