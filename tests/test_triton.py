"""The Triton backend against the reference (docs/design.md sections 1 and 5).

On a machine with no GPU the kernels run on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, set by conftest.py), which is slow: every case here is tiny. Tests marked
``cuda`` run the GPU canonical shapes and are skipped without a GPU.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from deeprnn_cuda import backends
from deeprnn_cuda import triton as tb
from deeprnn_cuda.functional import cbm_layer
from deeprnn_cuda.reference import cbm_layer_ref

from helpers import assert_close_rel, rel_err

requires_triton = pytest.mark.skipif(not tb.is_available(),
                                     reason=f"Triton backend unavailable: {tb.unavailable_reason()}")

HAS_CUDA = torch.cuda.is_available()
INTERPRET = tb.is_available() and tb.interpreter_active()
DEVICE = "cuda" if HAS_CUDA and not INTERPRET else "cpu"
_skip_no_gpu = pytest.mark.skipif(not HAS_CUDA or INTERPRET,
                                  reason="needs a CUDA GPU (Triton compiled, not interpreted)")


def needs_cuda(fn):
    return pytest.mark.cuda(_skip_no_gpu(fn))


GRAD_NAMES = ("x", "weight_r", "bias_r", "weight_t", "bias_t", "c0")
ACTS_R = ("relu", "tanh", "identity")
ACTS_T = ("sigmoid", "relu")
MERGES = ("mul", "add")
TDS = ("none", "node", "sample")
MODES = ("single", "multi")


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Tiny CPU cases: one ATen thread (a contended 2-core CI box spends ~0.5 s per op in thread sync)."""
    if DEVICE != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def mode(request):
    old = tb.set_mode(request.param)
    yield request.param
    tb.set_mode(old)


def make_inputs(T, B, C_in, C, H, W, k_r, k_t, *, dtype=torch.float32, device=DEVICE, bias=(True, True),
                td="none", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    x = rnd(T, B, C_in, H, W)
    weight_r = rnd(C, C_in, k_r, k_r, scale=(C_in * k_r * k_r) ** -0.5)
    weight_t = rnd(C, C_in + C, k_t, k_t, scale=((C_in + C) * k_t * k_t) ** -0.5)
    bias_r = rnd(C, scale=0.5) if bias[0] else None
    bias_t = rnd(C, scale=0.5) if bias[1] else None
    c0 = rnd(B, C, H, W, scale=0.5)
    if td == "node":
        td_mask = (torch.arange(T) % 2 == 0).to(device)
    elif td == "sample":
        td_mask = (torch.rand(T, B, generator=g) < 0.5).to(device)
        td_mask[0, 0], td_mask[-1, -1] = True, False
    else:
        td_mask = None
    go = rnd(T, B, C, H, W)
    gc = rnd(T, B, C, H, W)
    return (x, weight_r, bias_r, weight_t, bias_t, c0), td_mask, (go, gc)


def run(backend, args, td_mask, grads, **opts):
    """Forward + gradients of sum(o * go) + sum(c * gc) w.r.t. every tensor argument (None for None)."""
    leaves = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    o, c = cbm_layer(*leaves, td_mask=td_mask, backend=backend, **opts)
    go, gc = grads
    loss = (o.float() * go.float()).sum() + (c.float() * gc.float()).sum()
    present = [leaf for leaf in leaves if leaf is not None]
    gs = iter(torch.autograd.grad(loss, present))
    return o.detach(), c.detach(), [next(gs) if leaf is not None else None for leaf in leaves]


def check_against_reference(args, td_mask, grads, dtype=torch.float32, ref_args=None, **opts):
    o, c, g = run("triton", args, td_mask, grads, **opts)
    ref_args = args if ref_args is None else ref_args
    o_ref, c_ref, g_ref = run("reference", ref_args, td_mask, grads, **opts)
    assert_close_rel(o, o_ref, dtype, "o")
    assert_close_rel(c, c_ref, dtype, "c")
    for name, got, want in zip(GRAD_NAMES, g, g_ref):
        if want is None:
            assert got is None, name
        else:
            assert_close_rel(got, want, dtype, f"grad {name}")


# Every act_r x act_t x merge x TD combination, on both launch strategies. Each case is tiny; the
# shape (channels, image, kernel sizes) rotates over the combinations so that together they cover
# C < 16 (padded dot blocks), C > 16 (several channel tiles and K chunks), H*W > 32 (several pixel
# tiles), non-square images and every k_r/k_t pairing of 1 and 3.
COMBOS = list(itertools.product(ACTS_R, ACTS_T, MERGES, TDS))
SHAPES = [  # (C, H, W, k_r, k_t)
    (4, 5, 6, 3, 3),
    (8, 6, 5, 1, 3),
    (16, 5, 7, 3, 1),
    (20, 5, 6, 3, 3),
    (6, 6, 6, 1, 1),
]


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("act_r,act_t,merge,td", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_matches_reference(mode, act_r, act_t, merge, td):
    i = COMBOS.index((act_r, act_t, merge, td))
    C, H, W, k_r, k_t = SHAPES[i % len(SHAPES)]
    args, td_mask, grads = make_inputs(3, 2, 3, C, H, W, k_r, k_t, td=td, seed=i)
    check_against_reference(args, td_mask, grads, act_r=act_r, act_t=act_t, merge=merge)


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True)], ids=["none", "t-none", "r-none"])
def test_bias_none(mode, bias):
    args, td_mask, grads = make_inputs(3, 2, 3, 8, 5, 6, 3, 3, bias=bias, seed=7)
    check_against_reference(args, td_mask, grads)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_single_step_sequence_and_batch_one(mode):
    args, td_mask, grads = make_inputs(1, 1, 2, 5, 4, 3, 3, 3, td="sample", seed=3)
    check_against_reference(args, td_mask, grads)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_gradient_from_o_only_and_c_only(mode):
    args, _, (go, gc) = make_inputs(3, 2, 3, 8, 5, 5, 3, 3, seed=11)
    check_against_reference(args, None, (go, torch.zeros_like(gc)), act_r="tanh")
    check_against_reference(args, None, (torch.zeros_like(go), gc), act_t="relu", merge="add")


def test_float16_matches_float32_reference():
    """fp16 storage, float32 accumulation and state math (the interpreter has no bf16)."""
    old = tb.set_mode("auto")
    try:
        args, td_mask, grads = make_inputs(3, 2, 3, 8, 5, 6, 3, 3, td="node", seed=5, dtype=torch.float16)
        ref_args = [a.float() if a is not None else None for a in args]
        check_against_reference(args, td_mask, grads, dtype=torch.float16, ref_args=ref_args)
    finally:
        tb.set_mode(old)


def test_dispatch_by_shape():
    from deeprnn_cuda.triton import kernels

    old = tb.set_mode("auto")
    try:
        assert kernels.use_multistep(16, 16, 5, 6, 3)          # tiny image: one launch for all steps
        assert kernels.use_multistep(16, 64, 8, 8, 3)
        assert not kernels.use_multistep(16, 64, 56, 56, 3)    # GPU canonical shapes: a launch per step
        assert not kernels.use_multistep(16, 128, 28, 28, 3)
        assert not kernels.use_multistep(16, 256, 14, 14, 3)
        assert not kernels.use_multistep(16, 512, 7, 7, 3)
        tb.set_mode("multi")
        assert kernels.use_multistep(16, 512, 56, 56, 3)
        tb.set_mode("single")
        assert not kernels.use_multistep(1, 4, 2, 2, 1)
    finally:
        tb.set_mode(old)
    with pytest.raises(ValueError, match="mode"):
        tb.set_mode("sometimes")


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_autotuned_launch_path(monkeypatch, mode):
    """The GPU launch path (triton.autotune over the Hopper configs, pruning by shape, grid from the chosen
    config, cache keyed on shape) driven under the interpreter with a CPU timer in place of do_bench."""
    from deeprnn_cuda.triton import kernels

    if not INTERPRET:
        pytest.skip("on a GPU every other test already runs the autotuned path")

    def cpu_bench(kernel_call, quantiles=None, **kwargs):
        start = time.perf_counter()
        kernel_call()
        elapsed = time.perf_counter() - start
        return [elapsed] * len(quantiles) if quantiles else elapsed

    launchers = kernels.Launchers(autotune=True, do_bench=cpu_bench)
    monkeypatch.setattr(kernels, "LAUNCHERS", launchers)
    args, td_mask, grads = make_inputs(2, 2, 3, 20, 5, 7, 3, 3, td="sample", seed=13)
    check_against_reference(args, td_mask, grads, act_r="tanh")
    fwd, bwd = (launchers.fwd_seq, launchers.bwd_seq) if mode == "multi" else (launchers.fwd_step, launchers.bwd_step)
    assert len(fwd.cache) == 1 and len(bwd.cache) >= 1  # one tuned config per shape key
    for cfg in fwd.cache.values():
        assert cfg.kwargs.get("BLOCK_K", 16) <= 32  # pruned to the channel count (C=20)


def test_autotune_config_cap(monkeypatch):
    """DEEPRNN_TRITON_MAX_CONFIGS bounds what autotuning compiles per shape: the first N configurations that fit
    the shape, in the listed order; unset means every fitting one; a bad value is refused by name."""
    from deeprnn_cuda.triton import kernels

    args = dict(C=64, B=2, H=16, W=16)
    monkeypatch.delenv("DEEPRNN_TRITON_MAX_CONFIGS", raising=False)
    every_step = kernels._prune_step(kernels._step_configs(), args)
    every_seq = kernels._prune_seq(kernels._seq_configs(), args)
    assert len(every_step) > 2 and len(every_seq) > 2
    monkeypatch.setenv("DEEPRNN_TRITON_MAX_CONFIGS", "2")
    assert kernels._prune_step(kernels._step_configs(), args) == every_step[:2]
    assert kernels._prune_seq(kernels._seq_configs(), args) == every_seq[:2]
    assert all(c.kwargs["BLOCK_N"] <= 64 for c in every_step)  # the cap applies after pruning by shape
    monkeypatch.setenv("DEEPRNN_TRITON_MAX_CONFIGS", "two")
    with pytest.raises(ValueError, match="DEEPRNN_TRITON_MAX_CONFIGS"):
        kernels._prune_seq(kernels._seq_configs(), args)


def test_supports_and_backend_selection():
    x = torch.zeros(1, 1, 1, 2, 2, device=DEVICE)
    assert tb.supports(x)
    assert backends.resolve_backend("triton", x) is tb.cbm_layer_triton
    assert not tb.supports(x.double())
    assert tb.triton_version()
    if INTERPRET:
        assert not tb.supports(x.bfloat16())  # no bfloat16 math in the interpreter
        assert os.environ.get("TRITON_INTERPRET") == "1"


def _sample_op_args(td="sample", bias=(True, True)):
    args, td_mask, _ = make_inputs(2, 2, 3, 4, 3, 4, 3, 1, td=td, bias=bias, seed=2)
    return (*args, td_mask, 1, 0, 0)


@pytest.mark.parametrize("variant", ["td-bias", "no-td-no-bias"])
def test_opcheck_forward(variant):
    if variant == "td-bias":
        args = _sample_op_args()
    else:
        args = _sample_op_args(td="none", bias=(False, False))
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    torch.library.opcheck(torch.ops.deeprnn_triton.cbm_forward.default, args)


def test_opcheck_backward():
    x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, a_r, a_t, m = _sample_op_args()
    o, c, r = torch.ops.deeprnn_triton.cbm_forward(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, a_r, a_t, m)
    go, gc = torch.randn_like(o), torch.randn_like(c)
    torch.library.opcheck(
        torch.ops.deeprnn_triton.cbm_backward.default,
        (go, gc, x, weight_r, weight_t, c0, r, c, td_mask, a_r, a_t, m),
    )


def _compile_case(compile_backend):
    args, td_mask, grads = make_inputs(2, 2, 3, 4, 4, 5, 3, 3, td="node", seed=4)

    def f(x, weight_r, bias_r, weight_t, bias_t, c0):
        o, c = cbm_layer(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, backend="triton")
        return (o * grads[0]).sum() + (c * grads[1]).sum()

    compiled = torch.compile(f, backend=compile_backend, fullgraph=True)
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref_leaves = [a.detach().clone().requires_grad_() for a in args]
    loss = compiled(*leaves)
    g = torch.autograd.grad(loss, leaves)
    o_ref, c_ref = cbm_layer_ref(*ref_leaves, td_mask=td_mask)
    ref_loss = (o_ref * grads[0]).sum() + (c_ref * grads[1]).sum()
    g_ref = torch.autograd.grad(ref_loss, ref_leaves)
    assert_close_rel(loss, ref_loss, torch.float32, "loss")
    for name, a, b in zip(GRAD_NAMES, g, g_ref):
        assert_close_rel(a, b, torch.float32, f"grad {name}")


def test_torch_compile_aot_eager():
    """Dynamo + AOTAutograd trace through the custom ops (fake kernels, autograd registration)."""
    torch._dynamo.reset()
    _compile_case("aot_eager")


def test_torch_compile_inductor():
    if INTERPRET:
        pytest.skip("inductor codegen + C++ compile of the surrounding graph takes minutes on the CPU CI "
                    "machine; under the Triton interpreter the aot_eager test covers the custom-op tracing")
    torch._dynamo.reset()
    _compile_case("inductor")


def test_unavailable_when_triton_missing(monkeypatch):
    """With Triton missing, backend='triton' raises naming the package and 'auto' never picks it."""
    err = ModuleNotFoundError("No module named 'triton'", name="triton")
    monkeypatch.setattr(tb, "_IMPORT_ERROR", err)
    assert not tb.is_available()
    assert "'triton'" in tb.unavailable_reason() and "pip install triton" in tb.unavailable_reason()
    x = torch.zeros(1, 1, 1, 2, 2, device=DEVICE)
    assert not tb.supports(x)
    args, _, _ = make_inputs(1, 1, 1, 2, 2, 2, 1, 1)
    with pytest.raises(RuntimeError, match="backend='triton' is not available: the optional package 'triton'"):
        cbm_layer(*args, backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert backends.resolve_backend("auto", x) is not tb.cbm_layer_triton
    with pytest.raises(RuntimeError, match="triton"):
        tb.cbm_layer_triton(*args)
    assert "not available" in backends.backend_status()["triton"]


def test_import_without_triton_package():
    """A fresh interpreter where `import triton` fails still imports deeprnn_cuda and explains why."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import deeprnn_cuda\n"
        "from deeprnn_cuda import triton as tb\n"
        "from deeprnn_cuda.functional import cbm_layer\n"
        "assert not tb.is_available(), 'triton should be unavailable'\n"
        "assert 'triton' in tb.unavailable_reason(), tb.unavailable_reason()\n"
        "x = torch.zeros(1, 1, 1, 2, 2)\n"
        "w_r = torch.zeros(1, 1, 1, 1); w_t = torch.zeros(1, 2, 1, 1)\n"
        "try:\n"
        "    cbm_layer(x, w_r, None, w_t, None, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e); print('OK', e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_kernels_compile_for_hopper(tmp_path):
    """The interpreter never runs Triton's compiler: compile every kernel to an sm_90 cubin (no GPU needed)
    in a process without TRITON_INTERPRET, so compile-mode errors show up in CI too."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    code = "from deeprnn_cuda.triton import kernels\nprint(kernels.compile_check(90))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fwd_step" in proc.stdout and "bwd_seq" in proc.stdout


# ------------------------------------------------------------------------------------------------
# GPU only: canonical shapes (T=16, B=16), float32 and bf16, TF32 switch
# ------------------------------------------------------------------------------------------------

CANONICAL = [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


@needs_cuda
@pytest.mark.slow  # each shape and dtype autotunes (cold compiles): the GPU session's second part runs these
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C,H,W", CANONICAL, ids=[f"{c}x{h}" for c, h, _ in CANONICAL])
def test_cuda_canonical_shapes(C, H, W, dtype):
    args, td_mask, grads = make_inputs(16, 16, C, C, H, W, 3, 3, dtype=dtype, device="cuda", td="node", seed=C)
    # bf16: compare against the float32 reference on the same (bf16-rounded) inputs
    ref_args = [a.float() if a is not None else None for a in args] if dtype != torch.float32 else None
    check_against_reference(args, td_mask, grads, dtype=dtype, ref_args=ref_args)


@needs_cuda
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cuda_both_paths_small(mode, dtype):
    args, td_mask, grads = make_inputs(8, 4, 16, 32, 9, 11, 3, 3, dtype=dtype, device="cuda", td="sample", seed=1)
    ref_args = [a.float() if a is not None else None for a in args] if dtype != torch.float32 else None
    check_against_reference(args, td_mask, grads, dtype=dtype, ref_args=ref_args, act_r="tanh")


@needs_cuda
def test_cuda_tf32_switch():
    from deeprnn_cuda.triton import kernels

    x = torch.zeros(1, device="cuda")
    old = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert kernels.dot_precision(x) == "ieee"
        torch.backends.cudnn.allow_tf32 = True  # the flag the native convolutions follow too
        assert kernels.dot_precision(x) == "tf32"
        assert kernels.dot_precision(x.bfloat16()) == "ieee"  # ignored for bf16 operands anyway
        args, td_mask, grads = make_inputs(4, 4, 32, 64, 14, 14, 3, 3, device="cuda", seed=9)
        o, c, _ = run("triton", args, td_mask, grads)
        o_ref, c_ref, _ = run("reference", args, td_mask, grads)
        assert rel_err(o, o_ref) <= 1e-3 and rel_err(c, c_ref) <= 1e-3  # docs/design.md: TF32 <= 1e-3
    finally:
        torch.backends.cudnn.allow_tf32 = old


# Everything but the missing-Triton tests needs the backend.
_RUN_WITHOUT_TRITON = {"test_unavailable_when_triton_missing", "test_import_without_triton_package"}
for _name, _obj in list(globals().items()):
    if _name.startswith("test_") and callable(_obj) and _name not in _RUN_WITHOUT_TRITON:
        globals()[_name] = requires_triton(_obj)
