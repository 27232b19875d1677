"""What torch.compile and autograd see of the compiled CBM ops, checked on the CPU for every compiled backend here.

The fake (meta) kernels must describe exactly what the real kernels return, shapes and strides, or a compiled
graph disagrees with eager; the backend choice must be traceable without a graph break; ``r`` (saved for backward
only) must not look differentiable; Triton must launch on the tensors' own GPU.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from deeprnn_cuda import _native
from deeprnn_cuda import triton as triton_backend
from helpers import cuda_emulation, make_inputs

#: (ops, dtype, the context the calls run in): the native CPU ops also in the CUDA tables' configuration.
OPS = []
if _native.is_available():
    OPS.append(pytest.param(torch.ops.deeprnn, torch.float64, contextlib.nullcontext, id="native"))
    OPS.append(pytest.param(torch.ops.deeprnn, torch.float64, cuda_emulation, id="native-cuda-emulated"))
if triton_backend.is_available() and triton_backend.interpreter_active():
    OPS.append(pytest.param(torch.ops.deeprnn_triton, torch.float32, contextlib.nullcontext, id="triton"))


def _odd_layouts(dtype):
    """Inputs as a user can hand them over: x seen through a (B, T) transpose (the batch_first path), a
    channels_last c0, weights that are views of a larger tensor."""
    a = make_inputs(3, 2, 3, 4, 5, 6, dtype=dtype, seed=3)
    x = a["x"].detach().transpose(0, 1).contiguous().transpose(0, 1)
    c0 = a["c0"].detach().contiguous(memory_format=torch.channels_last)
    weight_r = torch.cat([a["weight_r"].detach()] * 2, 1)[:, ::2]
    weight_t = a["weight_t"].detach().permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not x.is_contiguous() and not c0.is_contiguous() and not weight_r.is_contiguous()
    return x, weight_r, a["bias_r"].detach(), weight_t, a["bias_t"].detach(), c0


def _run(ops, args):
    x, weight_r, bias_r, weight_t, bias_t, c0 = args
    o, c, r = ops.cbm_forward(x, weight_r, bias_r, weight_t, bias_t, c0, None, 1, 0, 0)
    grad_o = torch.randn_like(o) if not isinstance(o, torch._subclasses.FakeTensor) else torch.empty_like(o)
    grads = ops.cbm_backward(grad_o, grad_o.transpose(0, 1).contiguous().transpose(0, 1), x, weight_r, weight_t,
                             c0, r, c, torch.tensor([True, False, True]), 1, 0, 0)
    return (o, c, r), grads


@pytest.mark.parametrize("ops,dtype,context", OPS)
def test_fake_kernels_describe_the_real_outputs(ops, dtype, context):
    """Shapes, strides and dtypes of the fake kernels' outputs are the real kernels' (odd input layouts)."""
    args = _odd_layouts(dtype)
    with context():
        real_fwd, real_bwd = _run(ops, args)
    with FakeTensorMode() as mode:
        fake_fwd, fake_bwd = _run(ops, [mode.from_tensor(t) for t in args])
    for i, (real, fake) in enumerate(zip(real_fwd + real_bwd, fake_fwd + fake_bwd)):
        assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype), f"output {i}"


@pytest.mark.parametrize("ops,dtype,context", OPS)
def test_opcheck_with_odd_layouts(ops, dtype, context):
    x, weight_r, bias_r, weight_t, bias_t, c0 = _odd_layouts(dtype)
    for t in (x, weight_r, weight_t, c0):
        t.requires_grad_()
    with context():
        torch.library.opcheck(ops.cbm_forward, (x, weight_r, bias_r, weight_t, bias_t, c0, None, 2, 0, 0))


@pytest.mark.parametrize("ops,dtype,context", OPS)
def test_r_is_not_differentiable(ops, dtype, context):
    """r is returned for backward only; a gradient flowing into it would be dropped, so autograd must say so."""
    a = make_inputs(2, 1, 2, 3, 4, 4, dtype=dtype)
    with context():
        o, c, r = ops.cbm_forward(a["x"], a["weight_r"], a["bias_r"], a["weight_t"], a["bias_t"], a["c0"], None, 1, 0, 0)
    assert o.requires_grad and c.requires_grad
    assert not r.requires_grad


@pytest.mark.skipif(not _native.is_available(), reason=_native.unavailable_reason())
def test_backend_choice_traces_without_graph_break():
    """Whether CUDA kernels were compiled is a constant, so code that asks it (the backend dispatch) compiles with
    fullgraph=True; asking the op itself while tracing breaks the graph."""

    def f(x):
        return x + 1 if _native.cuda_compiled() else x - 1

    x = torch.randn(3)
    expected = x + 1 if torch.ops.deeprnn.cuda_compiled() else x - 1
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), expected)


@pytest.mark.skipif(not triton_backend.is_available(), reason=triton_backend.unavailable_reason())
def test_triton_ops_launch_on_the_tensors_device():
    from deeprnn_cuda.triton.ops import device_guard

    with FakeTensorMode():
        on_second_gpu = torch.empty(2, device="cuda:1")
    guard = device_guard(on_second_gpu)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(device_guard(torch.empty(2)), torch.cuda.device)
