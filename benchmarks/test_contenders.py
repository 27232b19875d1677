"""The issue-27 contenders compute the benchmarked layer: a wrong loop could make the native op look fast."""
import copy

import pytest
import torch

from benchmarks.cases import BENCH_CELLS, Shape, loop_module, native_twin
from benchmarks.contenders import (FLOOR, LOOPS, compiled_first_call, floor_parts, loop_layout, loop_params,
                                   loop_runner)

SHAPE = Shape(3, 2, 4, 5, 6, 7)  # C_in != C and H != W, so that a swapped axis or concatenation order shows


def library_layer(cell: str) -> torch.nn.Module:
    """The benchmarked layer on the reference backend, float32, with non-zero biases (nn.Conv2d's init)."""
    torch.manual_seed(0)
    return native_twin(cell, loop_module(cell, SHAPE), SHAPE, backend="reference")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def random_input() -> torch.Tensor:
    return torch.randn(SHAPE.T, SHAPE.B, SHAPE.C_in, SHAPE.H, SHAPE.W, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cell", BENCH_CELLS)
def test_functional_loop_matches_the_reference(cell):
    """Same parameters, same input: the loop's output and every gradient (the input's, and the library
    parameters' through the loop's layout) are the reference backend's within float32 rounding."""
    module = library_layer(cell)
    twin = copy.deepcopy(module)
    x, x_loop = random_input().requires_grad_(True), random_input().requires_grad_(True)
    want = module(x)[0]
    got = LOOPS[cell](x_loop, *loop_layout(cell, twin.layers[0]))
    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-5
    # A non-uniform upstream gradient, so that a loop mixing up steps or channels cannot hide behind sum().
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    pairs = [("x", x_loop.grad, x.grad)] + [(name, p_loop.grad, p.grad) for (name, p), p_loop in
                                            zip(module.named_parameters(), twin.parameters())]
    for name, g, w in pairs:
        assert relative_error(g, w) < 1e-5, name


@pytest.mark.parametrize("cell", BENCH_CELLS)
def test_loop_params_are_leaves_of_the_layer(cell):
    """The timed loop gets copies in its layout, with gradients, holding the layer's weights."""
    module = library_layer(cell)
    params = loop_params(cell, module)
    assert all(p.is_leaf and p.requires_grad for p in params)
    for p, want in zip(params, loop_layout(cell, module.layers[0])):
        assert torch.equal(p, want)


def test_compiled_first_call_rejects_a_wrong_contender():
    """The check made before the compiled loop is timed fails on a different output or a different gradient."""
    module = library_layer("convlstm")
    x, params = random_input(), loop_params("convlstm", module)
    eager = loop_runner(LOOPS["convlstm"], x, params)
    assert compiled_first_call(eager, eager, x, params, train=True) >= 0
    scaled = loop_runner(lambda x, w, b: LOOPS["convlstm"](x, w, b) * 1.001, x, params)
    with pytest.raises(AssertionError, match="output"):
        compiled_first_call(scaled, eager, x, params, train=False)
    # Same output, but the gradient reaching the weights is doubled.
    doubled = loop_runner(lambda x, w, b: LOOPS["convlstm"](x, w + (w - w.detach()), b), x, params)
    with pytest.raises(AssertionError, match="grad of argument 1"):
        compiled_first_call(doubled, eager, x, params, train=True)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "train"])
@pytest.mark.parametrize("cell", BENCH_CELLS)
def test_floor_parts_run(cell, train):
    """Inference's floor is the forward convolutions; training's adds their input and weight gradients."""
    parts = floor_parts(cell, SHAPE, train)
    assert all(name.startswith(FLOOR) for name in parts)
    assert len(parts) == (5 if train else 2)
    for part in parts.values():
        part(train)


def test_compiled_loop_runs_and_matches_the_eager_loop():
    """torch.compile of a loop (the smallest: ConvLSTM, one step) compiles here and agrees with the eager loop."""
    shape = Shape(1, 1, 2, 2, 4, 4)
    torch.manual_seed(0)
    params = loop_params("convlstm", native_twin("convlstm", loop_module("convlstm", shape), shape, "reference"))
    x = torch.randn(shape.T, shape.B, shape.C_in, shape.H, shape.W)
    compiled = loop_runner(torch.compile(LOOPS["convlstm"], dynamic=False), x, params)
    compiled_first_call(compiled, loop_runner(LOOPS["convlstm"], x, params), x, params, train=True)
