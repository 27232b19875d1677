"""pytest-benchmark suite: ``pytest benchmarks`` (``--benchmark-disable`` runs each case once as a test)."""
import pytest

from benchmarks.cases import CPU_SHAPES, contenders


@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("name", ["authors (per-step eager)", "reference", "native"])
def test_cbm_layer_cpu(benchmark, shape, train, name):
    fns = contenders(shape)
    if name not in fns:
        pytest.skip(f"{name} backend not available")
    benchmark.group = f"{shape} {'fwd+bwd' if train else 'fwd'}"
    benchmark(fns[name], train)
