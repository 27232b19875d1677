"""The native CPU driver's time chunks (csrc/cbm_recurrence.cpp) against the reference, in float64.

The CPU op takes the input projections (and, backward, the weight and input gradients) a chunk of time steps at
a time once T*B*(C_in+2C)*H*W exceeds StepKernels::conv_chunk_elements (2^18 by default), and backward hands
each chunk the recurrent gradient of the chunk after it. The default is out of reach of tiny test shapes, so
these tests set it small (tests/helpers.py: cpu_conv_chunk_elements) and run every chunk branch: one step per
chunk, several chunks with an uneven last one, exactly one chunk, every act/merge/TD option.
"""
import itertools
import math

import pytest
import torch

from deeprnn_cuda import cbm_layer
from helpers import assert_close_rel, count_ops, cpu_conv_chunk_elements, make_inputs
from test_functional import ACT_R, ACT_T, MERGE, TD, make_td, run_with_grads

NAMES = ["o", "c", "dx", "dweight_r", "dbias_r", "dweight_t", "dbias_t", "dc0"]
SHAPE = dict(T=5, B=2, C_in=2, C=3, H=4, W=3)


def elements_for(steps: int, B: int, C_in: int, C: int, H: int, W: int, **_) -> int:
    """A conv_chunk_elements that makes the driver take ``steps`` time steps per chunk (its rule in cbm.h)."""
    return steps * B * (C_in + 2 * C) * H * W


def chunk_count(steps: int, T: int) -> int:
    return math.ceil(T / steps)


# (steps per chunk at SHAPE) -> what it exercises; 0 means "one chunk, whatever the size"
CHUNKINGS = {1: "a chunk per step", 2: "chunks 2+2+1: uneven last", 3: "chunks 3+2", 5: "one chunk, exactly T"}


def assert_matches_reference(inputs, td, chunk_elements, **opts):
    mask = make_td(td, inputs["x"].shape[0], inputs["x"].shape[1])
    with cpu_conv_chunk_elements(chunk_elements):
        got = run_with_grads(inputs, "native", mask, **opts)
    ref = run_with_grads(inputs, "reference", mask, **opts)
    for name, a, b in zip(NAMES, got, ref):
        assert_close_rel(a, b, torch.float64, f"{name} ({opts}, td={td}, chunk_elements={chunk_elements})")


@pytest.mark.parametrize("steps", [1, 2], ids=["per-step", "uneven"])
@pytest.mark.parametrize("act_r,act_t,merge,td", list(itertools.product(ACT_R, ACT_T, MERGE, TD)))
def test_chunks_match_reference_every_option(act_r, act_t, merge, td, steps):
    inputs = make_inputs(**SHAPE, seed=21)
    assert_matches_reference(inputs, td, elements_for(steps, **SHAPE), act_r=act_r, act_t=act_t, merge=merge)


@pytest.mark.parametrize("steps", sorted(CHUNKINGS), ids=[CHUNKINGS[s] for s in sorted(CHUNKINGS)])
@pytest.mark.parametrize("td", TD)
def test_every_chunking_matches_reference(steps, td):
    assert_matches_reference(make_inputs(**SHAPE, seed=22), td, elements_for(steps, **SHAPE))


@pytest.mark.parametrize("chunk_elements", [0, 1, 7 * 96], ids=["unlimited", "one-image", "images-not-multiple-of-B"])
def test_odd_batch_and_no_c0(chunk_elements):
    """B = 3 with chunk sizes that are not whole steps (the driver rounds down to >= 1 step); c0 = None."""
    shape = dict(T=4, B=3, C_in=2, C=3, H=4, W=2)
    inputs = make_inputs(**shape, seed=23)
    inputs["c0"] = None
    assert_matches_reference(inputs, "sample", chunk_elements)


@pytest.mark.parametrize("steps", sorted(CHUNKINGS))
def test_chunk_setting_really_splits_the_work(steps):
    """The setter takes effect: forward runs one input-projection conv per chunk plus one recurrent conv per
    step, and backward one batched input-gradient convolution_backward per chunk (so the tests above did run
    the chunked branches, not one chunk under another name)."""
    inputs = make_inputs(**SHAPE, seed=24)
    T, chunks = SHAPE["T"], chunk_count(steps, SHAPE["T"])
    with cpu_conv_chunk_elements(elements_for(steps, **SHAPE)):
        with torch.no_grad():
            assert count_ops(lambda: cbm_layer(**inputs, backend="native"), "aten::conv2d") == chunks + T
        o, c = cbm_layer(**inputs, backend="native")
        # Per chunk: one convolution_backward for the input projections' weights, bias and x, and one for
        # the recurrent weight; backward runs last chunk first, so the chunk holding t = 0 is the remainder,
        # and when it has more than one step its c0 pair takes one more call.
        calls = count_ops(lambda: torch.autograd.grad(o.sum() + c.sum(), list(inputs.values())),
                          "aten::convolution_backward")
    first_chunk_steps = T - steps * (chunks - 1)
    assert calls == 2 * chunks + (1 if first_chunk_steps > 1 else 0), calls


def test_default_chunk_is_unchanged():
    """Tests restore the driver's default of 2^18 elements per chunk (csrc/cpu/conv_chunk.h)."""
    previous = torch.ops.deeprnn._set_cpu_conv_chunk_elements(123)
    assert previous == 1 << 18
    assert torch.ops.deeprnn._set_cpu_conv_chunk_elements(previous) == 123
