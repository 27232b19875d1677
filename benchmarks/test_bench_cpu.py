"""pytest-benchmark suite: ``pytest benchmarks`` (``--benchmark-disable`` runs each case once as a test)."""
import pytest
import torch

from benchmarks.cases import (BENCH_CELLS, CPU_SHAPES, LOOP, Shape, cell_contenders, contenders, loop_module,
                              native_twin)
from deeprnn_cuda import _native


@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("name", ["authors (per-step eager)", "reference", "native"])
def test_cbm_layer_cpu(benchmark, shape, train, name):
    fns = contenders(shape)
    if name not in fns:
        pytest.skip(f"{name} backend not available")
    benchmark.group = f"{shape} {'fwd+bwd' if train else 'fwd'}"
    benchmark(fns[name], train)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "train"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("contender", [LOOP, "native"])
@pytest.mark.parametrize("cell", BENCH_CELLS)
def test_cell_cpu(benchmark, cell, contender, shape, train):
    fns = cell_contenders(cell, shape)
    if contender not in fns:
        pytest.skip(f"{contender} backend not available")
    benchmark.group = f"{cell} {shape} {'train' if train else 'inference'}"
    benchmark(fns[contender], train)


@pytest.mark.skipif(not _native.is_available(), reason="native extension not built")
@pytest.mark.parametrize("cell", BENCH_CELLS)
def test_cell_contenders_compute_the_same_layer(cell):
    """The native twin of each per-step loop has its weights and layout: the timings compare like with like."""
    shape = Shape(3, 2, 4, 5, 6, 7)
    torch.manual_seed(0)
    loop = loop_module(cell, shape).double()
    x = torch.randn(shape.T, shape.B, shape.C_in, shape.H, shape.W, dtype=torch.float64)
    want = loop(x.transpose(0, 1))[0].transpose(0, 1) if cell == "cbm" else loop(x)
    got = native_twin(cell, loop, shape)(x)[0]
    assert ((got - want).norm() / want.norm()).item() < 1e-10  # docs/design.md section 5, float64
