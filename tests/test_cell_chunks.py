"""The native CPU driver's time chunks for ConvLSTM and ConvGRU against the reference, in float64.

The CPU driver batches a cell's input projections over a chunk of time steps (conv_chunk_elements, 2^18
elements by default); when one step alone fills a chunk, each cell instead convolves concatenations per step,
forward and backward (csrc/recurrence.h: one_step_per_chunk, StepConcat): ConvLSTM cat[x_t, h_{t-1}] once,
ConvGRU cat[x_t, h_{t-1}] for z, r and cat[x_t, r * h_{t-1}] for n. Tiny test shapes reach every form with the
chunk set small (tests/helpers.py: cpu_conv_chunk_elements).
"""
import pytest
import torch

from cell_helpers import BIAS_CASES, CELLS, layer, make_cell_inputs, names, outputs, run_with_grads
from deeprnn_cuda import _native
from helpers import assert_close_rel, count_ops, cpu_conv_chunk_elements

pytestmark = pytest.mark.skipif(not _native.is_available(), reason="native extension not built")

SHAPE = dict(T=5, B=2, C_in=2, C=3, H=4, W=3)
GATES = {"convlstm": 4, "convgru": 3}


def elements_for(cell: str, steps: int, B: int, C_in: int, C: int, H: int, W: int, **_) -> int:
    """A conv_chunk_elements that gives ``steps`` time steps per chunk (csrc/recurrence.cpp: chunk_steps)."""
    return steps * B * (C_in + GATES[cell] * C) * H * W


# steps per chunk at SHAPE -> what it exercises
CHUNKINGS = {1: "one-step-per-chunk", 2: "chunks-2-2-1", 5: "one-chunk"}


@pytest.mark.parametrize("steps", sorted(CHUNKINGS), ids=[CHUNKINGS[s] for s in sorted(CHUNKINGS)])
@pytest.mark.parametrize("cell,bias", [(c, b) for c in CELLS for b in BIAS_CASES[c]])
def test_every_chunking_matches_reference(cell, bias, steps):
    inputs = make_cell_inputs(cell, **SHAPE, bias=bias, seed=31)
    with cpu_conv_chunk_elements(elements_for(cell, steps, **SHAPE)):
        got = run_with_grads(cell, inputs, "native")
    for n, a, b in zip(names(cell, inputs), got, run_with_grads(cell, inputs, "reference")):
        assert_close_rel(a, b, torch.float64, f"{cell} {n} ({CHUNKINGS[steps]})")


@pytest.mark.parametrize("shape", [dict(T=3, B=1, C_in=1, C=2, H=5, W=3, k=5), dict(T=1, B=3, C_in=3, C=2, H=2, W=6, k=1)],
                         ids=["k5-B1", "T1-k1"])
@pytest.mark.parametrize("states", [True, False], ids=["h0c0", "zero-states"])
def test_convlstm_step_concat_other_shapes(shape, states):
    inputs = make_cell_inputs("convlstm", **shape, states=states, seed=33)
    with cpu_conv_chunk_elements(1):
        got = run_with_grads("convlstm", inputs, "native")
    for n, a, b in zip(names("convlstm", inputs), got, run_with_grads("convlstm", inputs, "reference")):
        assert_close_rel(a, b, torch.float64, n)


@pytest.mark.parametrize("k, k_h", [(1, 5), (5, 3), (3, 3)])
@pytest.mark.parametrize("states", [True, False], ids=["h0", "zero-state"])
def test_convgru_step_concat_other_shapes(k, k_h, states):
    """The concatenated weights pad the smaller of the two kernels, and the gradients are cropped back."""
    inputs = make_cell_inputs("convgru", T=3, B=2, C_in=2, C=3, H=5, W=6, k=k, k_h=k_h, states=states, seed=36)
    with cpu_conv_chunk_elements(1):
        got = run_with_grads("convgru", inputs, "native")
    for n, a, b in zip(names("convgru", inputs), got, run_with_grads("convgru", inputs, "reference")):
        assert_close_rel(a, b, torch.float64, n)


@pytest.mark.parametrize("cell", CELLS)
def test_step_concat_gradcheck(cell):
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=2, H=3, W=4, seed=34)
    keys = [k for k, v in inputs.items() if v is not None]
    with cpu_conv_chunk_elements(1):
        assert torch.autograd.gradcheck(lambda *t: layer(cell)(**dict(zip(keys, t)), backend="native"),
                                        tuple(inputs[k] for k in keys), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("steps", sorted(CHUNKINGS), ids=[CHUNKINGS[s] for s in sorted(CHUNKINGS)])
@pytest.mark.parametrize("cell", CELLS)
def test_chunk_setting_picks_the_form(cell, steps):
    """One step per chunk runs the cell's concatenated convolutions only (per step: ConvLSTM one, ConvGRU two;
    as many convolution_backward calls in backward, and no other convolution); with more steps per chunk, one
    projection per chunk plus the recurrent convolutions of every step, forward and backward. So the tests
    above ran both forms, not one under two names."""
    inputs = make_cell_inputs(cell, **SHAPE, seed=35)
    wrt = [v for v in inputs.values() if v is not None]
    T, chunks, per_step = SHAPE["T"], -(-SHAPE["T"] // steps), 1 if cell == "convlstm" else 2

    def loss():
        return sum(o.sum() for o in outputs(cell, layer(cell)(**inputs, backend="native")))

    with cpu_conv_chunk_elements(elements_for(cell, steps, **SHAPE)):
        with torch.no_grad():
            convs = count_ops(lambda: layer(cell)(**inputs, backend="native"), "aten::conv2d")
        value = loss()
        backward_convs = count_ops(lambda: torch.autograd.grad(value, wrt), "aten::conv2d")
        value = loss()
        backward_calls = count_ops(lambda: torch.autograd.grad(value, wrt), "aten::convolution_backward")
    if steps == 1:
        assert (convs, backward_convs, backward_calls) == (per_step * T, 0, per_step * T)
    else:
        assert convs == chunks + per_step * T and backward_convs == per_step * T and backward_calls > chunks


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_concat_low_precision_against_float64_reference(cell, dtype):
    """float32 takes the im2col convolution and the SIMD epilogues, bfloat16 the scalar ones, both reading the
    broadcast zero operand of this form."""
    inputs = make_cell_inputs(cell, T=4, B=2, C_in=3, C=4, H=6, W=5, dtype=dtype, seed=37)
    ref_inputs = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    with cpu_conv_chunk_elements(1):
        got = run_with_grads(cell, inputs, "native")
    for n, a, b in zip(names(cell, inputs), got, run_with_grads(cell, ref_inputs, "reference")):
        assert a.dtype == dtype, n
        assert_close_rel(a, b, dtype, f"{cell} {n} {dtype}")
