"""backend="auto" for ConvLSTM and ConvGRU picking per shape by measurement (deeprnn_cuda.autotune.choose_layer).

As in tests/test_autotune.py: on the CPU there is one compiled candidate, so these tests inject two fake ones
("a" the native layer, "b" the native layer with its outputs doubled, so a result shows which one ran) and a fake
timer, or two real native candidates and a timer that records the ops each timed run dispatches. The test marked
for CUDA measures the real native and Triton backends on a GPU.
"""
import pytest
import torch

from cell_helpers import CELLS, layer, make_cell_inputs, outputs
from deeprnn_cuda import _native, autotune, backends, convgru_layer_ref, convlstm_layer_ref
from dispatch_log import DeeprnnOps
from helpers import assert_close_rel, fresh_autotune

needs_native = pytest.mark.skipif(not _native.is_available(), reason="native extension not built")
SHAPE = dict(T=3, B=2, C_in=2, C=3, H=4, W=4)


class Fakes:
    """Candidates "a" (static preference) and "b" per cell, a timer returning ``cost[name]``, and a log of
    ``(name, grad mode, any input requires grad, all_states)``. A candidate in ``fail`` raises ``error(name)``."""

    def __init__(self, cost, fail=()):
        self.cost, self.fail, self.log = dict(cost), set(fail), []
        self.error = lambda name: RuntimeError(f"{name} cannot run this")

    def candidates(self, cell, x):
        native = getattr(_native, f"{cell}_layer_native")

        def make(name, scale):
            def run(*args, **options):
                self.log.append((name, torch.is_grad_enabled(), any(
                    t is not None and t.requires_grad for t in args), options.get("all_states")))
                torch.rand(3)  # consumes RNG: measurement must restore it
                if name in self.fail:
                    raise self.error(name)
                out = native(*args, **options)  # ConvLSTM: (h, c); ConvGRU: h
                return scale * out if isinstance(out, torch.Tensor) else tuple(scale * o for o in out)

            return name, run

        return [make("a", 1.0), make("b", 2.0)]

    def timer(self, fn):
        fn()
        return self.cost[self.log[-1][0]]


@pytest.fixture
def fakes(monkeypatch):
    f = Fakes({"a": 3.0, "b": 1.0})
    monkeypatch.setattr(backends, "cell_auto_candidates", f.candidates)
    monkeypatch.setattr(autotune, "time_ms", f.timer)
    with fresh_autotune():
        yield f


def native_outputs(cell, inputs):
    return outputs(cell, layer(cell)(**inputs, backend="native"))


@needs_native
@pytest.mark.parametrize("cell", CELLS)
def test_picks_the_faster_and_caches_per_key(fakes, cell):
    inputs = make_cell_inputs(cell, **SHAPE)
    got = outputs(cell, layer(cell)(**inputs))
    for a, b in zip(got, native_outputs(cell, inputs)):
        torch.testing.assert_close(a, 2 * b)  # "b" ran
    # Measured once each with gradients (backward through autograd), then the winner ran for real.
    assert [e[0] for e in fakes.log] == ["a", "b", "b"] and all(e[1] and e[2] for e in fakes.log)
    (key, entry), = autotune.cache().items()
    assert entry == autotune.Entry("b", {"a": 3.0, "b": 1.0})
    assert key.cell == cell and key.grad and key.dtype == torch.float64 and key.tf32 is None
    assert key.shapes[0] == (3, 2, 2, 4, 4) and len(key.shapes) == (5 if cell == "convlstm" else 6)

    n = len(fakes.log)
    layer(cell)(**inputs)
    assert len(fakes.log) == n + 1  # cached: the winner runs, nothing is measured

    fakes.cost = {"a": 1.0, "b": 2.0}
    other = make_cell_inputs(cell, **dict(SHAPE, T=2))
    for a, b in zip(outputs(cell, layer(cell)(**other)), native_outputs(cell, other)):
        torch.testing.assert_close(a, b)  # new shape: measured again, "a" wins
    with torch.no_grad():  # no gradients needed: another key, measured without autograd
        layer(cell)(**inputs)
    assert [e[1] for e in fakes.log[-3:]] == [False, False, False]
    assert len(autotune.cache()) == 3


@needs_native
def test_cells_and_precision_flags_have_their_own_keys(fakes, monkeypatch):
    lstm, gru = make_cell_inputs("convlstm", **SHAPE, dtype=torch.float32), make_cell_inputs("convgru", **SHAPE)
    layer("convlstm")(**lstm)
    layer("convgru")(**gru)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    layer("convlstm")(**lstm)
    assert sorted((k.cell, k.tf32) for k in autotune.cache()) == [
        ("convgru", None), ("convlstm", False), ("convlstm", True)]


@needs_native
@pytest.mark.parametrize("all_states", [True, False])
def test_convlstm_without_gradients_measures_with_the_calls_all_states(fakes, all_states):
    """Without gradients the native layer runs its inference op, which keeps only the final state when
    all_states=False: the candidates are timed with the call's all_states, and the key records it."""
    inputs = make_cell_inputs("convlstm", **SHAPE)
    with torch.no_grad():
        h, c = layer("convlstm")(**inputs, all_states=all_states)
    eh, ec = native_outputs("convlstm", inputs)
    torch.testing.assert_close((h, c), (2 * eh, 2 * (ec if all_states else ec[-1:])))
    # timed on detached leaves, then the winner runs on the caller's tensors
    assert fakes.log == [("a", False, False, all_states), ("b", False, False, all_states),
                         ("b", False, True, all_states)]
    (key, _), = autotune.cache().items()
    assert not key.grad and key.all_states is all_states


@needs_native
def test_all_states_has_its_own_key_only_without_gradients(fakes):
    lstm, gru = make_cell_inputs("convlstm", **SHAPE), make_cell_inputs("convgru", **SHAPE)
    layer("convlstm")(**lstm, all_states=True)
    layer("convlstm")(**lstm, all_states=False)  # the same forward and backward ops run: cached
    with torch.no_grad():
        layer("convlstm")(**lstm, all_states=True)
        layer("convlstm")(**lstm, all_states=False)  # the inference op keeps fewer states: measured again
        layer("convgru")(**gru)
    assert sorted((k.cell, k.grad, k.all_states) for k in autotune.cache()) == [
        ("convgru", False, None), ("convlstm", False, False), ("convlstm", False, True), ("convlstm", True, None)]
    assert len(fakes.log) == 3 + 1 + 3 + 3 + 3  # measured twice and ran: three times; cached: once


@needs_native
@pytest.mark.parametrize("all_states", [True, False])
def test_timed_ops_are_the_ops_the_call_runs_without_gradients(monkeypatch, all_states):
    """Two real native candidates: what each timed run dispatches is what the call itself then dispatches."""
    native = _native.convlstm_layer_native
    monkeypatch.setattr(backends, "cell_auto_candidates", lambda cell, x: [("native", native), ("again", native)])
    timed = []

    def recording_timer(fn):
        with DeeprnnOps() as ops:
            fn()
        timed.append(ops.ops)
        return 1.0

    monkeypatch.setattr(autotune, "time_ms", recording_timer)
    inputs = make_cell_inputs("convlstm", **SHAPE)
    with fresh_autotune(), torch.no_grad():
        layer("convlstm")(**inputs, all_states=all_states)  # measures
        with DeeprnnOps() as ops:  # cached: the dispatch mode does not stop it from running the choice
            layer("convlstm")(**inputs, all_states=all_states)
    assert len(timed) == 2 and ops.ops and timed[0] == timed[1] == ops.ops


@needs_native
def test_cuda_error_of_a_candidate_propagates(fakes):
    """A sticky CUDA error is not skipped (rule and cases: tests/test_autotune.py): it propagates at once."""
    fakes.fail = {"a"}
    raised = torch.AcceleratorError("CUDA error: device-side assert triggered")
    fakes.error = lambda name: raised
    with pytest.raises(torch.AcceleratorError) as info:
        layer("convgru")(**make_cell_inputs("convgru", **SHAPE))
    assert info.value is raised
    assert [e[0] for e in fakes.log] == ["a"] and autotune.cache() == {}


@needs_native
def test_measurement_leaves_rng_inputs_and_graph_alone(fakes):
    inputs = make_cell_inputs("convlstm", **SHAPE)
    before = {k: (v.detach().clone(), v._version) for k, v in inputs.items()}
    torch.manual_seed(5)
    torch.rand(3)  # what the winner's own run draws: all an unmeasured call would leave behind
    expected = torch.rand(4)
    torch.manual_seed(5)
    h, c = layer("convlstm")(**inputs)
    assert torch.equal(torch.rand(4), expected)
    for k, v in inputs.items():
        assert torch.equal(v, before[k][0]) and v._version == before[k][1] and v.grad is None, k
    h.sum().backward()  # the graph is the winner's, intact
    assert all(v.grad is not None for v in inputs.values())


@needs_native
def test_failing_candidate_is_dropped_with_a_warning(fakes):
    fakes.fail = {"b"}
    fakes.cost = {"a": 3.0, "b": 1.0}
    inputs = make_cell_inputs("convgru", **SHAPE)
    with pytest.warns(UserWarning, match="backend 'b' failed"):
        h = outputs("convgru", layer("convgru")(**inputs))[0]
    torch.testing.assert_close(h, native_outputs("convgru", inputs)[0])
    assert next(iter(autotune.cache().values())).backend == "a"


@needs_native
def test_disabled_or_untraceable_takes_the_static_preference(fakes):
    inputs = make_cell_inputs("convlstm", **SHAPE)
    autotune.set_enabled(False)
    layer("convlstm")(**inputs)
    assert [e[0] for e in fakes.log] == ["a"] and autotune.cache() == {}
    autotune.set_enabled(True)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = make_cell_inputs("convlstm", **SHAPE)
        h, _ = layer("convlstm")(**fake)
    assert h.shape == (3, 2, 3, 4, 4)
    assert [e[0] for e in fakes.log] == ["a", "a"] and autotune.cache() == {}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (never run yet)")
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_auto_measures_native_and_triton_once_and_matches_reference(cell, monkeypatch):
    names = [name for name, _ in backends.cell_auto_candidates(cell, torch.zeros(1, 1, 1, 1, 1, device="cuda"))]
    if names != ["native", "triton"]:
        pytest.skip(f"needs both the native CUDA and the Triton backend, have {names}")
    calls = []
    real = autotune.time_ms
    monkeypatch.setattr(autotune, "time_ms", lambda fn: calls.append(1) or real(fn))
    autotune.clear_cache()
    inputs = make_cell_inputs(cell, **SHAPE, device="cuda")
    got = outputs(cell, layer(cell)(**inputs))
    ref = outputs(cell, (convlstm_layer_ref if cell == "convlstm" else convgru_layer_ref)(**inputs))
    for a, b in zip(got, ref):
        assert_close_rel(a, b, torch.float64)
    layer(cell)(**inputs)
    assert len(calls) == 2  # each candidate timed once, on the first call only
    autotune.clear_cache()
