"""The ConvLSTM / ConvGRU CUDA epilogues (csrc/cuda/cells_kernels.cu) and CBM's inference op on the GPU, against
the references computed in float64 on the GPU from the same (rounded) inputs (docs/design.md section 5).

Every test here is marked ``cuda`` and skipped without a GPU. NEVER RUN ON A GPU so far: written and collected on
a machine without one; the kernels they check were only compiled with nvcc.
"""
import pytest
import torch

from cell_helpers import BIAS_CASES, CELLS, layer, make_cell_inputs, names, outputs, run_with_grads
from deeprnn_cuda import _native, cbm_layer, convlstm_layer
from helpers import assert_close_rel, make_inputs

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
DEV = "cuda"
CASES = [(cell, bias) for cell in CELLS for bias in BIAS_CASES[cell]]


def as_double(inputs):
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not _native.cuda_compiled():
        pytest.skip("the extension was built without its CUDA kernels")


@pytest.mark.parametrize("cell,bias", CASES)
@pytest.mark.parametrize("shape", [dict(T=4, B=3, C_in=5, C=6, H=7, W=5), dict(T=3, B=1, C_in=2, C=8, H=8, W=8, k=1)])
def test_float64_matches_reference(cell, bias, shape):
    inputs = make_cell_inputs(cell, **shape, bias=bias, device=DEV)
    for n, a, b in zip(names(cell, inputs), run_with_grads(cell, inputs, "native"),
                       run_with_grads(cell, inputs, "reference")):
        assert a.is_cuda
        assert_close_rel(a, b, torch.float64, f"{cell} {n}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_against_float64_reference(cell, dtype):
    inputs = make_cell_inputs(cell, T=4, B=2, C_in=3, C=8, H=8, W=8, dtype=dtype, device=DEV)
    got, ref = run_with_grads(cell, inputs, "native"), run_with_grads(cell, as_double(inputs), "reference")
    for n, a, b in zip(names(cell, inputs), got, ref):
        assert a.dtype == dtype, n
        assert_close_rel(a, b, dtype, f"{cell} {n} {dtype}")


@pytest.mark.parametrize("cell", CELLS)
def test_inference_matches_training_forward(cell):
    inputs = make_cell_inputs(cell, T=5, B=2, C_in=3, C=4, H=6, W=6, dtype=torch.float32, device=DEV)
    trained = outputs(cell, layer(cell)(**inputs, backend="native"))
    with torch.inference_mode():
        inferred = outputs(cell, layer(cell)(**inputs, backend="native"))
    for a, b in zip(inferred, trained):
        assert_close_rel(a, b.detach(), torch.float32)


def test_cbm_inference_matches_training_forward():
    inputs = make_inputs(T=5, B=2, C_in=3, C=4, H=6, W=6, dtype=torch.float32, device=DEV)
    trained = cbm_layer(**inputs, backend="native")
    with torch.no_grad():
        inferred = cbm_layer(**inputs, backend="native")
    for a, b in zip(inferred, trained):
        assert_close_rel(a, b.detach(), torch.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_autocast_cuda(cell):
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=3, C=4, H=5, W=5, dtype=torch.float32, device=DEV)
    with torch.autocast("cuda", dtype=torch.float16):
        outs = outputs(cell, layer(cell)(**inputs, backend="native"))
    assert all(o.dtype == torch.float16 for o in outs)
    outs[0].float().sum().backward()
    ref = outputs(cell, layer(cell)(**as_double(inputs), backend="reference"))
    for a, b in zip(outs, ref):
        assert_close_rel(a, b, torch.float16)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_compile_fullgraph(cell):
    inputs = make_cell_inputs(cell, T=3, B=2, C_in=2, C=3, H=4, W=4, dtype=torch.float32, device=DEV)

    def step(**kw):
        return sum((o * o).sum() for o in outputs(cell, layer(cell)(**kw, backend="native")))

    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(**inputs)
    assert_close_rel(loss, step(**inputs), torch.float32)



@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
@pytest.mark.parametrize("T", [1, 4])
def test_inference_final_state_only(cell, T):
    """``all_states=False`` under no_grad: the CUDA inference ops keep two states in turn (NEVER RUN ON A GPU)."""
    if cell == "cbm":
        fn, inputs = cbm_layer, make_inputs(T=T, B=2, C_in=3, C=4, H=6, W=5, dtype=torch.float64, device=DEV)
    else:
        fn, inputs = convlstm_layer, make_cell_inputs(cell, T=T, B=2, C_in=3, C=4, H=6, W=5, device=DEV)
    with torch.no_grad():
        out, c = fn(**inputs, backend="native", all_states=False)
        out_ref, c_ref = fn(**inputs, backend="reference")
    assert_close_rel(out, out_ref, torch.float64, f"{cell} output")
    assert_close_rel(c, c_ref[-1:], torch.float64, f"{cell} final state")
    assert c.untyped_storage().nbytes() <= 2 * c[0].numel() * c.element_size()
