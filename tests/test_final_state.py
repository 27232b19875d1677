"""``all_states=False``: CBM and ConvLSTM return only the final state, ``c[-1:]``, and the native inference ops
then keep two states instead of T (csrc/recurrence.h: StepStates), in every form of the CPU driver and in the CUDA
tables' configuration (one projection chunk, a whole-sequence hook) with the CUDA kernels' bodies on the host.

The independent side is the reference layer run with every state kept, in float64; the storage check catches
an op that computes all T states and slices the last.
"""
import pytest
import torch

from cell_helpers import make_cell_inputs
from deeprnn_cuda import CBM, ConvLSTM, _native, cbm_layer, convlstm_layer
from helpers import assert_close_rel, cpu_conv_chunk_elements, cuda_emulation, make_inputs

pytestmark = pytest.mark.skipif(not _native.is_available(), reason="native extension not built")

# The forms the driver takes at these sizes: the CPU table's chunk elements (tests/test_cell_chunks.py), and the
# CUDA table's configuration run on the host.
DRIVERS = {"default": lambda: cpu_conv_chunk_elements(None), "one-chunk": lambda: cpu_conv_chunk_elements(0),
           "one-step-per-chunk": lambda: cpu_conv_chunk_elements(1),
           "chunks-of-few-steps": lambda: cpu_conv_chunk_elements(700), "cuda-emulated": cuda_emulation}


def _inputs(cell: str, seed: int, **sizes):
    """The layer's keyword inputs (requiring grad) at small sizes, ``sizes`` overriding them."""
    shape = {**dict(T=4, B=2, C_in=2, C=3, H=4, W=5), **sizes}
    return make_inputs(**shape, seed=seed) if cell == "cbm" else make_cell_inputs(cell, **shape, seed=seed)


def _run(cell: str, inputs, backend: str, all_states: bool):
    if cell == "cbm":
        return cbm_layer(**inputs, act_r="tanh", backend=backend, all_states=all_states)
    return convlstm_layer(**inputs, backend=backend, all_states=all_states)


@pytest.mark.parametrize("driver", list(DRIVERS))
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
def test_native_inference_keeps_only_the_final_state(cell, T, driver):
    inputs = _inputs(cell, seed=T, T=T)
    with torch.no_grad():
        out_ref, c_ref = _run(cell, inputs, "reference", all_states=True)
        with DRIVERS[driver]():
            out, c = _run(cell, inputs, "native", all_states=False)
    assert c.shape == (1,) + tuple(c_ref.shape[1:])
    assert_close_rel(out, out_ref, torch.float64, f"{cell} output")
    assert_close_rel(c, c_ref[-1:], torch.float64, f"{cell} final state")
    state_bytes = c[0].numel() * c.element_size()
    assert c.untyped_storage().nbytes() <= 2 * state_bytes, "the op allocated more than two states"


#: Backends and the driver configuration they run in.
BACKENDS = {"reference": ("reference", lambda: cpu_conv_chunk_elements(None)),
            "native": ("native", lambda: cpu_conv_chunk_elements(None)), "native-cuda-emulated": ("native", cuda_emulation)}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
def test_final_state_only_with_autograd(cell, backend):
    """With gradients the forward keeps every state for backward and returns the last; the gradients through it
    are the full run's."""
    inputs, full_inputs = _inputs(cell, seed=3), _inputs(cell, seed=3)  # the same values, separate leaves
    name, driver = BACKENDS[backend]
    with driver():
        out, c = _run(cell, inputs, name, all_states=False)
    out_f, c_f = _run(cell, full_inputs, "reference", all_states=True)
    assert c.shape[0] == 1
    assert_close_rel(c, c_f[-1:], torch.float64, "final state")
    g = torch.Generator().manual_seed(5)
    w_out, w_c = torch.randn(out.shape, generator=g, dtype=torch.float64), torch.randn(c.shape, generator=g,
                                                                                       dtype=torch.float64)
    leaves = [v for v in inputs.values() if v is not None]
    full = [v for v in full_inputs.values() if v is not None]
    with driver():
        grads = torch.autograd.grad((out * w_out).sum() + (c * w_c).sum(), leaves)
    grads_f = torch.autograd.grad((out_f * w_out).sum() + (c_f[-1:] * w_c).sum(), full)
    for i, (a, b) in enumerate(zip(grads, grads_f)):
        assert_close_rel(a, b, torch.float64, f"gradient {i}")


@pytest.mark.parametrize("sizes", [dict(T=0), dict(T=3, B=0), dict(T=2, H=0)], ids=["T0", "B0", "H0"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
def test_empty_sequences(cell, backend, sizes):
    """``c[-1:]`` of the empty full result: (0, ...) for T = 0, (1, ...) with an empty batch or image."""
    inputs = _inputs(cell, seed=0, **sizes)
    name, driver = BACKENDS[backend]
    with torch.no_grad():
        _, c_full = _run(cell, inputs, "reference", all_states=True)
        with driver():
            _, c = _run(cell, inputs, name, all_states=False)
    assert c.shape == c_full[-1:].shape


@pytest.mark.parametrize("return_states", [False, True])
@pytest.mark.parametrize("module", [CBM, ConvLSTM])
def test_modules_in_inference_match_the_reference(module, return_states):
    """The modules keep only final states unless asked for the per-step ones; their results are unchanged."""
    torch.manual_seed(0)
    ref = module(2, [3, 4], kernel_size=3, num_layers=2, backend="reference").double()
    nat = module(2, [3, 4], kernel_size=3, num_layers=2, backend="native").double()
    nat.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 2, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        got, want = nat(x, return_states=return_states), ref(x, return_states=return_states)
    for i, (a, b) in enumerate(zip(_tensors(got), _tensors(want), strict=True)):
        assert_close_rel(a, b, torch.float64, f"result {i}")


def _tensors(result) -> list:
    """Every tensor of a module's result (output, final states, per-step states), nested lists flattened."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for item in result for t in _tensors(item)]
