"""The Triton ConvLSTM and ConvGRU ops against plain per-step loops written from the cell contract.

The independent side is here, not in the package: :func:`lstm_loop` and :func:`gru_loop` follow the
contract's formulas step by step with ``F.conv2d`` (gates split i, f, o, g / z, r, n along output
channels; ``weight`` convolves ``cat([x_t, h_{t-1}])``; the GRU's candidate convolves ``r * h_{t-1}``),
and autograd differentiates them. Under the Triton interpreter (no GPU) every case is tiny; the ``cuda``
tests run bf16/fp16 and a larger shape on a GPU and are skipped without one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deeprnn_cuda import triton as tb

from helpers import assert_close_rel

requires_triton = pytest.mark.skipif(not tb.is_available(),
                                     reason=f"Triton backend unavailable: {tb.unavailable_reason()}")
pytestmark = requires_triton

HAS_CUDA = torch.cuda.is_available()
INTERPRET = tb.is_available() and tb.interpreter_active()
DEVICE = "cuda" if HAS_CUDA and not INTERPRET else "cpu"
cuda_only = pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU (Triton compiled, not interpreted)")
MODES = ("single", "multi")
LSTM_GRADS = ("x", "weight", "bias", "h0", "c0")
GRU_GRADS = ("x", "weight_x", "bias_x", "weight_h", "bias_h", "h0")


@pytest.fixture
def mode(request):
    old = tb.set_mode(request.param)
    yield request.param
    tb.set_mode(old)


# ------------------------------------------------------------------------------------------------
# the independent side: the contract, one step at a time
# ------------------------------------------------------------------------------------------------


def lstm_loop(x, weight, bias, h0, c0):
    """ConvLSTM: A = conv(cat[x_t, h], weight) + bias; i, f, o, g; c = f c + i g; h = o tanh(c)."""
    k = weight.shape[-1]
    h, c, hs, cs = h0, c0, [], []
    for t in range(x.shape[0]):
        a_i, a_f, a_o, a_g = F.conv2d(torch.cat([x[t], h], 1), weight, bias, padding=k // 2).chunk(4, 1)
        c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        h = torch.sigmoid(a_o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs)


def gru_loop(x, weight_x, bias_x, weight_h, bias_h, h0):
    """ConvGRU: z, r from conv(x) + conv(h); n = tanh(a_n + conv(r h, W_hn) + b_hn); h = (1-z) n + z h."""
    C = h0.shape[1]
    px, ph = weight_x.shape[-1] // 2, weight_h.shape[-1] // 2
    b_zr, b_n = (None, None) if bias_h is None else (bias_h[:2 * C], bias_h[2 * C:])
    h, hs = h0, []
    for t in range(x.shape[0]):
        a_z, a_r, a_n = F.conv2d(x[t], weight_x, bias_x, padding=px).chunk(3, 1)
        u_z, u_r = F.conv2d(h, weight_h[:2 * C], b_zr, padding=ph).chunk(2, 1)
        z, r = torch.sigmoid(a_z + u_z), torch.sigmoid(a_r + u_r)
        n = torch.tanh(a_n + F.conv2d(r * h, weight_h[2 * C:], b_n, padding=ph))
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs)


# ------------------------------------------------------------------------------------------------
# inputs and comparison
# ------------------------------------------------------------------------------------------------


def _rnd(g, dtype, device):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)
    return rnd


def lstm_inputs(T, B, C_in, C, H, W, k, *, bias=True, dtype=torch.float64, device=DEVICE, seed=0):
    """``(x, weight, bias, h0, c0)`` drawn in float64 (Xavier-like scales, never zeros), then cast."""
    rnd = _rnd(torch.Generator().manual_seed(seed), dtype, device)
    return (rnd(T, B, C_in, H, W), rnd(4 * C, C_in + C, k, k, scale=((C_in + C) * k * k) ** -0.5),
            rnd(4 * C, scale=0.5) if bias else None, rnd(B, C, H, W, scale=0.5), rnd(B, C, H, W, scale=0.5))


def gru_inputs(T, B, C_in, C, H, W, k_x, k_h, *, bias=(True, True), dtype=torch.float64, device=DEVICE, seed=0):
    """``(x, weight_x, bias_x, weight_h, bias_h, h0)``."""
    rnd = _rnd(torch.Generator().manual_seed(seed), dtype, device)
    return (rnd(T, B, C_in, H, W), rnd(3 * C, C_in, k_x, k_x, scale=(C_in * k_x * k_x) ** -0.5),
            rnd(3 * C, scale=0.5) if bias[0] else None, rnd(3 * C, C, k_h, k_h, scale=(C * k_h * k_h) ** -0.5),
            rnd(3 * C, scale=0.5) if bias[1] else None, rnd(B, C, H, W, scale=0.5))


def forward_and_grads(layer, args, weights):
    """Outputs of ``layer(*args)`` (a tensor or a tuple) and the gradients of ``sum_i <out_i, weights_i>``
    w.r.t. every tensor argument (None for a None argument)."""
    leaves = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    outs = layer(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    acc = torch.float64 if args[0].dtype == torch.float64 else torch.float32
    loss = sum((o.to(acc) * w.to(acc)).sum() for o, w in zip(outs, weights) if w is not None)
    present = [leaf for leaf in leaves if leaf is not None]
    grads = iter(torch.autograd.grad(loss, present))
    return [o.detach() for o in outs], [next(grads) if leaf is not None else None for leaf in leaves]


def compare(layer, ref, args, weights, names, dtype, ref_args=None):
    outs, grads = forward_and_grads(layer, args, weights)
    ref_outs, ref_grads = forward_and_grads(ref, args if ref_args is None else ref_args, weights)
    for i, (got, want) in enumerate(zip(outs, ref_outs)):
        assert got.dtype == args[0].dtype and got.is_contiguous()
        assert_close_rel(got, want, dtype, f"output {i}")
    for name, got, want in zip(names, grads, ref_grads):
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == want.dtype or ref_args is not None, name
            assert_close_rel(got, want, dtype, f"grad {name}")


def _weights(T, B, C, H, W, n, dtype, device=DEVICE, seed=100, only=None):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(T, B, C, H, W, generator=g).to(device, dtype) for _ in range(n)]
    return [w if only is None or i == only else None for i, w in enumerate(ws)]


# ------------------------------------------------------------------------------------------------
# values and every gradient, both launch strategies
# ------------------------------------------------------------------------------------------------

# (T, B, C_in, C, H, W, k, bias, dtype, loss on): H*W = 42 > 32 rows takes two pixel tiles; k = 1;
# the f32 cases' loss sees only h or only c (the other output's gradient is None).
LSTM_CASES = [
    (3, 2, 3, 4, 5, 6, 3, True, torch.float64, None),
    (2, 2, 2, 3, 6, 7, 3, False, torch.float32, 0),
    (2, 1, 2, 4, 5, 5, 1, True, torch.float32, 1),
]
# (T, B, C_in, C, H, W, k_x, k_h, bias_x, bias_h, dtype)
GRU_CASES = [
    (3, 2, 3, 4, 5, 6, 3, 3, True, True, torch.float64),
    (2, 2, 2, 3, 6, 7, 1, 3, False, True, torch.float32),
    (2, 1, 2, 4, 5, 5, 3, 1, True, False, torch.float32),
    (2, 1, 1, 2, 5, 5, 3, 3, False, False, torch.float64),
]


def _ids(cases):
    return ["-".join(str(v).replace("torch.", "") for v in c) for c in cases]


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("case", LSTM_CASES, ids=_ids(LSTM_CASES))
def test_convlstm_matches_loop(mode, case):
    T, B, C_in, C, H, W, k, bias, dtype, only = case
    args = lstm_inputs(T, B, C_in, C, H, W, k, bias=bias, dtype=dtype, seed=T * 10 + C)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(T, B, C, H, W, 2, dtype, only=only),
            LSTM_GRADS, dtype)


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("case", GRU_CASES, ids=_ids(GRU_CASES))
def test_convgru_matches_loop(mode, case):
    T, B, C_in, C, H, W, k_x, k_h, b_x, b_h, dtype = case
    args = gru_inputs(T, B, C_in, C, H, W, k_x, k_h, bias=(b_x, b_h), dtype=dtype, seed=T * 10 + C)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(T, B, C, H, W, 1, dtype), GRU_GRADS, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_many_channel_tiles_and_chunks(mode):
    """C = 17 > 16: two channel tiles, two K chunks (the LSTM's backward reduces over 4C = 68 channels)."""
    args = lstm_inputs(2, 1, 2, 17, 4, 5, 3, seed=5)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(2, 1, 17, 4, 5, 2, torch.float64),
            LSTM_GRADS, torch.float64)
    args = gru_inputs(2, 1, 2, 17, 4, 5, 3, 3, seed=6)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(2, 1, 17, 4, 5, 1, torch.float64),
            GRU_GRADS, torch.float64)


@pytest.mark.slow
def test_float16_matches_float32_loop():
    """fp16 storage and operands, float32 accumulation and state math (the interpreter has no bf16)."""
    dt = torch.float16
    args = lstm_inputs(3, 2, 3, 4, 5, 6, 3, dtype=dt, seed=7)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(3, 2, 4, 5, 6, 2, dt), LSTM_GRADS, dt,
            ref_args=[a.float() for a in args])
    args = gru_inputs(3, 2, 3, 4, 5, 6, 3, 3, dtype=dt, seed=8)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(3, 2, 4, 5, 6, 1, dt), GRU_GRADS, dt,
            ref_args=[a.float() for a in args])


def test_empty_sequence():
    """T = 0: empty outputs of the right shape, and zero gradients (nothing flows)."""
    args = lstm_inputs(0, 2, 3, 4, 5, 6, 3)
    leaves = [a.clone().requires_grad_() for a in args]
    h, c = tb.convlstm_layer_triton(*leaves)
    assert h.shape == c.shape == (0, 2, 4, 5, 6)
    grads = torch.autograd.grad(h.sum() + c.sum(), leaves, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)

    args = gru_inputs(0, 2, 3, 4, 5, 6, 3, 1)
    leaves = [a.clone().requires_grad_() for a in args]
    h = tb.convgru_layer_triton(*leaves)
    assert h.shape == (0, 2, 4, 5, 6)
    grads = torch.autograd.grad(h.sum(), leaves, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_gradcheck_float64():
    """torch.autograd.gradcheck (fast mode) of both layers through the custom ops' autograd."""
    lstm = [a.requires_grad_() for a in lstm_inputs(2, 1, 1, 2, 3, 4, 3, seed=3)]
    assert torch.autograd.gradcheck(tb.convlstm_layer_triton, lstm, fast_mode=True)
    gru = [a.requires_grad_() for a in gru_inputs(2, 1, 1, 2, 3, 4, 3, 3, seed=4)]
    assert torch.autograd.gradcheck(tb.convgru_layer_triton, gru, fast_mode=True)


# ------------------------------------------------------------------------------------------------
# registration: opcheck (schemas, fake kernels, autograd registration), torch.compile
# ------------------------------------------------------------------------------------------------


def _requiring_grad(args):
    return tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_opcheck_convlstm(bias):
    args = lstm_inputs(2, 1, 2, 2, 3, 3, 3, bias=bias, dtype=torch.float32, seed=1)
    torch.library.opcheck(torch.ops.deeprnn_triton.convlstm_forward.default, _requiring_grad(args))
    x, weight, _, h0, c0 = args
    h, c, gates = torch.ops.deeprnn_triton.convlstm_forward(*[a.detach() if a is not None else None for a in args])
    torch.library.opcheck(torch.ops.deeprnn_triton.convlstm_backward.default,
                          (torch.randn_like(h), torch.randn_like(c), x.detach(), weight.detach(), h0.detach(),
                           c0.detach(), h, c, gates))


@pytest.mark.parametrize("bias", [(True, True), (False, False)], ids=["bias", "no-bias"])
def test_opcheck_convgru(bias):
    args = gru_inputs(2, 1, 2, 2, 3, 3, 3, 1, bias=bias, dtype=torch.float32, seed=2)
    torch.library.opcheck(torch.ops.deeprnn_triton.convgru_forward.default, _requiring_grad(args))
    x, weight_x, _, weight_h, _, h0 = args
    h, saved = torch.ops.deeprnn_triton.convgru_forward(*[a.detach() if a is not None else None for a in args])
    torch.library.opcheck(torch.ops.deeprnn_triton.convgru_backward.default,
                          (torch.randn_like(h), x.detach(), weight_x.detach(), weight_h.detach(), h0.detach(),
                           h, saved))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """Dynamo + AOTAutograd trace both cells' custom ops in one graph (fake kernels, autograd)."""
    torch._dynamo.reset()
    lstm = lstm_inputs(2, 1, 2, 3, 4, 5, 3, dtype=torch.float32, seed=9)
    gru = gru_inputs(2, 1, 2, 3, 4, 5, 3, 3, dtype=torch.float32, seed=10)
    gh, gc = _weights(2, 1, 3, 4, 5, 2, torch.float32)

    def f(layer_lstm, layer_gru, lstm_args, gru_args):
        h, c = layer_lstm(*lstm_args)
        return (h * gh).sum() + (c * gc).sum() + (layer_gru(*gru_args) * gh).sum()

    compiled = torch.compile(lambda a, b: f(tb.convlstm_layer_triton, tb.convgru_layer_triton, a, b),
                             backend="aot_eager", fullgraph=True)
    leaves = [[a.clone().requires_grad_() for a in args] for args in (lstm, gru)]
    ref_leaves = [[a.clone().requires_grad_() for a in args] for args in (lstm, gru)]
    loss = compiled(*leaves)
    ref_loss = f(lstm_loop, gru_loop, *ref_leaves)
    assert_close_rel(loss, ref_loss, torch.float32, "loss")
    got = torch.autograd.grad(loss, leaves[0] + leaves[1])
    want = torch.autograd.grad(ref_loss, ref_leaves[0] + ref_leaves[1])
    for name, a, b in zip(LSTM_GRADS + GRU_GRADS, got, want):
        assert_close_rel(a, b, torch.float32, f"grad {name}")


# ------------------------------------------------------------------------------------------------
# backend plumbing
# ------------------------------------------------------------------------------------------------


def test_cell_supports():
    x = torch.zeros(1, 1, 1, 2, 2, device=DEVICE)
    assert tb.cell_supports(x) and tb.cell_supports(x.half())
    assert tb.cell_supports(x.double()) == INTERPRET  # float64 only under the interpreter
    assert not tb.cell_supports(x.to(torch.int32))
    if INTERPRET:
        assert not tb.cell_supports(x.bfloat16())
    else:
        assert tb.cell_supports(x.bfloat16())


def test_unavailable_raises(monkeypatch):
    monkeypatch.setattr(tb, "_IMPORT_ERROR", ModuleNotFoundError("No module named 'triton'", name="triton"))
    assert not tb.cell_supports(torch.zeros(1))
    with pytest.raises(RuntimeError, match="backend='triton' is not available: the optional package 'triton'"):
        tb.convlstm_layer_triton(*lstm_inputs(1, 1, 1, 1, 2, 2, 1))
    with pytest.raises(RuntimeError, match="backend='triton' is not available"):
        tb.convgru_layer_triton(*gru_inputs(1, 1, 1, 1, 2, 2, 1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_autotuned_launch_path(monkeypatch, mode):
    """The GPU launch path (triton.autotune, config pruning, grid from the chosen config) driven under the
    interpreter with a CPU timer in place of do_bench."""
    from deeprnn_cuda.triton import cell_kernels

    if not INTERPRET:
        pytest.skip("on a GPU every other test already runs the autotuned path")

    def cpu_bench(kernel_call, quantiles=None, **kwargs):
        start = time.perf_counter()
        kernel_call()
        elapsed = time.perf_counter() - start
        return [elapsed] * len(quantiles) if quantiles else elapsed

    launchers = cell_kernels.CellLaunchers(autotune=True, do_bench=cpu_bench)
    monkeypatch.setattr(cell_kernels, "LAUNCHERS", launchers)
    args = lstm_inputs(2, 2, 2, 3, 4, 5, 3, dtype=torch.float32, seed=11)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(2, 2, 3, 4, 5, 2, torch.float32), LSTM_GRADS,
            torch.float32)
    args = gru_inputs(2, 2, 2, 3, 4, 5, 3, 3, dtype=torch.float32, seed=12)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(2, 2, 3, 4, 5, 1, torch.float32), GRU_GRADS,
            torch.float32)
    kind = "seq" if mode == "multi" else "step"
    for name in ("lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd"):
        assert len(getattr(launchers, f"{name}_{kind}").cache) >= 1, name  # tuned once per key


@pytest.mark.slow
def test_kernels_compile_for_hopper(tmp_path):
    """Compile the cell kernels to sm_90 cubins (no GPU needed) in a process without TRITON_INTERPRET: the
    multi-step kernels contain every tile function and phase, so they cover the compile-mode code."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    code = ("from deeprnn_cuda.triton import cell_kernels as k\n"
            "print(k.compile_check(90, [('lstm_fwd_seq', 'fp32', 'tf32', {}), ('lstm_bwd_seq', 'bf16', 'ieee', {}),\n"
            "                           ('gru_fwd_seq', 'fp16', 'ieee', {}), ('gru_bwd_seq', 'fp32', 'ieee', {})]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lstm_bwd_seq" in proc.stdout and "gru_bwd_seq" in proc.stdout


# ------------------------------------------------------------------------------------------------
# GPU only (never run here: no GPU on the development machine)
# ------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_half_precision(mode, dtype):
    args = lstm_inputs(6, 4, 16, 32, 9, 11, 3, dtype=dtype, device="cuda", seed=21)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(6, 4, 32, 9, 11, 2, dtype, "cuda"), LSTM_GRADS,
            dtype, ref_args=[a.float() for a in args])
    args = gru_inputs(6, 4, 16, 32, 9, 11, 3, 3, dtype=dtype, device="cuda", seed=22)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(6, 4, 32, 9, 11, 1, dtype, "cuda"), GRU_GRADS,
            dtype, ref_args=[a.float() for a in args])


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_moderate_shape(dtype):
    """T = 8, B = 8, C = 64 at 28x28: the single-step path with several row and channel tiles."""
    ref = (lambda args: [a.float() for a in args]) if dtype != torch.float32 else (lambda args: None)
    args = lstm_inputs(8, 8, 64, 64, 28, 28, 3, dtype=dtype, device="cuda", seed=23)
    compare(tb.convlstm_layer_triton, lstm_loop, args, _weights(8, 8, 64, 28, 28, 2, dtype, "cuda"), LSTM_GRADS,
            dtype, ref_args=ref(args))
    args = gru_inputs(8, 8, 64, 64, 28, 28, 3, 3, dtype=dtype, device="cuda", seed=24)
    compare(tb.convgru_layer_triton, gru_loop, args, _weights(8, 8, 64, 28, 28, 1, dtype, "cuda"), GRU_GRADS,
            dtype, ref_args=ref(args))

