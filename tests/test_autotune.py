"""backend="auto" picking per shape by measurement (deeprnn_cuda.autotune).

On the CPU there is only one compiled candidate, so these tests inject two fake ones (both the native CPU
ops; candidate "b"'s layer doubles its outputs so a result shows which one ran) and a fake timer, or two real
native candidates and a timer that records the ops each timed run dispatches. The tests marked ``cuda`` run
the real measurement between the native and Triton backends on a GPU.
"""
import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from deeprnn_cuda import _native, autotune, backends, cbm_layer
from deeprnn_cuda.reference import cbm_layer_ref
import helpers
from dispatch_log import DeeprnnOps

HAS_CUDA = torch.cuda.is_available()
OPS = torch.ops.deeprnn
SHAPE = dict(T=3, B=2, C_in=2, C=3, H=4, W=4)


class Fakes:
    """Two candidates "a" (static preference) and "b", a timer returning ``cost[name]``, and a log. The forward
    op of a candidate in ``fail`` raises ``error(name)``."""

    def __init__(self, cost, fail=()):
        self.cost, self.fail, self.log = dict(cost), set(fail), []
        self.error = lambda name: RuntimeError(f"{name} cannot run this")
        self.candidates = [self._candidate("a", 1.0), self._candidate("b", 2.0)]

    def _candidate(self, name, scale):
        def forward(*args):
            self.log.append(("forward", name, torch.is_grad_enabled(), any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in args)))
            torch.rand(3)  # consumes RNG: measurement must restore it
            if name in self.fail:
                raise self.error(name)
            return OPS.cbm_forward(*args)

        def backward(*args):
            self.log.append(("backward", name))
            return OPS.cbm_backward(*args)

        def layer(*args, **kwargs):
            self.log.append(("layer", name, torch.is_grad_enabled(), kwargs["all_states"]))
            o, c = _native.cbm_layer_native(*args, **kwargs)
            return o * scale, c * scale

        return autotune.Candidate(name, layer, forward, backward)

    def timer(self, fn):
        fn()
        return self.cost[self.log[-1][1]]

    def measured(self, kind="forward"):
        return [e[1] for e in self.log if e[0] == kind]


@pytest.fixture
def fakes(monkeypatch):
    """Install fake candidates and timer (costs set per test) around an empty cache, autotuning on."""
    f = Fakes({"a": 3.0, "b": 1.0})
    monkeypatch.setattr(backends, "auto_candidates", lambda x: list(f.candidates))
    monkeypatch.setattr(autotune, "time_ms", f.timer)
    with helpers.fresh_autotune():
        yield f


def native_out(inputs, **opts):
    return _native.cbm_layer_native(**inputs, **opts)


def test_picks_the_faster_and_caches_per_key(fakes):
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    o, c = cbm_layer(**inputs)
    eo, ec = native_out(inputs)
    torch.testing.assert_close((o, c), (2 * eo, 2 * ec))  # "b" ran
    assert fakes.measured() == ["a", "b"] and fakes.measured("backward") == ["a", "b"]
    (key, entry), = autotune.cache().items()
    assert entry == autotune.Entry("b", {"a": 3.0, "b": 1.0})
    assert key.shape == (3, 2, 2, 3, 4, 4) and key.dtype == torch.float32 and key.grad
    assert key.bias == (True, True) and key.td_mask_dim == 0 and key.tf32 is False

    n = len(fakes.log)
    cbm_layer(**inputs)
    assert fakes.log[n:] == [("layer", "b", True, True)]  # cached: no measurement, the winner runs

    fakes.cost = {"a": 1.0, "b": 2.0}
    other = helpers.make_inputs(**dict(SHAPE, T=2), dtype=torch.float32)
    o, _ = cbm_layer(**other)
    torch.testing.assert_close(o, native_out(other)[0])  # new shape: measured again, "a" wins
    assert fakes.measured() == ["a", "b", "a", "b"]
    with torch.no_grad():  # no gradients needed: another key, measured on the layers (next tests)
        cbm_layer(**inputs)
    assert fakes.measured() == ["a", "b"] * 2 and fakes.measured("backward") == ["a", "b"] * 2
    assert len(autotune.cache()) == 3


@pytest.mark.parametrize("all_states", [True, False])
@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "no_input_requires_grad"])
def test_call_without_gradients_measures_the_layers_with_its_all_states(fakes, how, all_states):
    """Without gradients the layer runs the inference op, not the forward op: the layers are what is timed,
    with the call's all_states, and the key records it."""
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    if how == "no_input_requires_grad":
        inputs = {k: v.detach() for k, v in inputs.items()}
    with {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(how, contextlib.nullcontext)():
        o, c = cbm_layer(**inputs, all_states=all_states)
    eo, ec = native_out({k: v.detach() for k, v in inputs.items()})
    torch.testing.assert_close((o, c), (2 * eo, 2 * (ec if all_states else ec[-1:])))
    measured = [("layer", "a", False, all_states), ("layer", "b", False, all_states)]
    assert fakes.log[:2] == measured and fakes.measured() == []
    (key, _), = autotune.cache().items()
    assert not key.grad and key.all_states is all_states


def test_all_states_has_its_own_key_only_without_gradients(fakes):
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    cbm_layer(**inputs, all_states=True)
    cbm_layer(**inputs, all_states=False)  # the same forward and backward ops run: cached
    with torch.no_grad():
        cbm_layer(**inputs, all_states=True)
        cbm_layer(**inputs, all_states=False)  # the inference op keeps fewer states: measured again
    assert sorted((k.grad, k.all_states) for k in autotune.cache()) == [(False, False), (False, True), (True, None)]
    assert fakes.measured() == ["a", "b"]
    assert [e[1:] for e in fakes.log if e[0] == "layer" and not e[2]] == [
        ("a", False, True), ("b", False, True), ("b", False, True),
        ("a", False, False), ("b", False, False), ("b", False, False)]


@pytest.mark.parametrize("all_states", [True, False])
def test_timed_ops_are_the_ops_the_call_runs_without_gradients(monkeypatch, all_states):
    """Two real native candidates: what each timed run dispatches is what the call itself then dispatches."""
    native = autotune.Candidate("native", _native.cbm_layer_native, OPS.cbm_forward, OPS.cbm_backward)
    monkeypatch.setattr(backends, "auto_candidates", lambda x: [native, native._replace(name="again")])
    timed = []

    def recording_timer(fn):
        with DeeprnnOps() as ops:
            fn()
        timed.append(ops.ops)
        return 1.0

    monkeypatch.setattr(autotune, "time_ms", recording_timer)
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    with helpers.fresh_autotune(), torch.no_grad():
        cbm_layer(**inputs, all_states=all_states)  # measures
        with DeeprnnOps() as ops:  # cached: the dispatch mode does not stop it from running the choice
            cbm_layer(**inputs, all_states=all_states)
    assert len(timed) == 2 and ops.ops and timed[0] == timed[1] == ops.ops


def test_key_tracks_options_and_precision_flags(fakes, monkeypatch):
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    cbm_layer(**inputs)
    cbm_layer(**inputs, td_mask=torch.zeros(3, dtype=torch.bool))
    cbm_layer(**inputs, merge="add")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    cbm_layer(**inputs)
    assert len(autotune.cache()) == 4
    assert len(fakes.measured()) == 8


def test_cache_is_a_copy(fakes):
    cbm_layer(**helpers.make_inputs(**SHAPE, dtype=torch.float32))
    snapshot = autotune.cache()
    next(iter(snapshot.values())).times_ms["a"] = 0.0
    snapshot.clear()
    assert next(iter(autotune.cache().values())).times_ms["a"] == 3.0
    autotune.clear_cache()
    assert autotune.cache() == {}


def test_measurement_leaves_rng_inputs_and_graph_alone(fakes):
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    before = {k: (v.detach().clone(), v._version) for k, v in inputs.items()}
    rng = torch.get_rng_state()
    o, c = cbm_layer(**inputs)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in inputs.items():
        assert torch.equal(v, before[k][0]) and v._version == before[k][1] and v.grad is None
    # measured without grad mode, on detached inputs
    assert all(not e[2] and not e[3] for e in fakes.log if e[0] == "forward")
    # the call itself goes through the normal autograd path of the winner
    wrt = list(inputs.values())
    got = torch.autograd.grad((o.sum() + c.sum()), wrt)
    eo, ec = native_out(inputs)
    want = torch.autograd.grad(2 * (eo.sum() + ec.sum()), wrt)
    torch.testing.assert_close(got, want)


def triton_out_of_resources():
    errors = pytest.importorskip("triton.runtime.errors")
    return errors.OutOfResources(300000, 232448, "shared memory")


#: failures that leave the device usable: the candidate is skipped
SKIPPED = {
    "RuntimeError": lambda: RuntimeError("b cannot run this"),
    "ValueError": lambda: ValueError("this backend does not support k_t=9"),
    "NotImplementedError": lambda: NotImplementedError("no kernel for this dtype"),
    "OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "triton OutOfResources": triton_out_of_resources,
}

#: CUDA errors, sticky or not: they propagate
CUDA_ERRORS = {
    "AcceleratorError": lambda: torch.AcceleratorError("unspecified launch failure"),  # the type decides
    "device-side assert": lambda: RuntimeError(
        "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side "
        "assertions."),
    "triton launch": lambda: RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
    "cudnn": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
}


@pytest.mark.parametrize("error", SKIPPED)
def test_failing_candidate_is_dropped(fakes, error):
    fakes.fail = {"b"}
    fakes.error = lambda name: SKIPPED[error]()
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    with pytest.warns(UserWarning, match="backend 'b' failed on this shape and is skipped"):
        o, _ = cbm_layer(**inputs)
    torch.testing.assert_close(o, native_out(inputs)[0])
    assert [e.backend for e in autotune.cache().values()] == ["a"]
    assert next(iter(autotune.cache().values())).times_ms == {"a": 3.0}


@pytest.mark.parametrize("error", CUDA_ERRORS)
def test_cuda_error_of_a_candidate_propagates(fakes, error):
    """An illegal address or device-side assert leaves the CUDA context unusable: skipping the candidate would
    only move the error to the next call. It propagates at once, nothing else runs, nothing is cached."""
    fakes.fail = {"a"}
    raised = CUDA_ERRORS[error]()
    fakes.error = lambda name: raised
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipped" warning either
        with pytest.raises(type(raised)) as info:
            cbm_layer(**inputs)
    assert info.value is raised
    assert fakes.measured() == ["a"] and autotune.cache() == {}


def test_all_candidates_failing_takes_the_first_uncached(fakes):
    fakes.fail = {"a", "b"}
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o, _ = cbm_layer(**inputs)
    torch.testing.assert_close(o, native_out(inputs)[0])
    assert autotune.cache() == {}


def test_disabled_takes_the_static_preference(fakes):
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    cbm_layer(**inputs)  # caches "b"
    autotune.set_enabled(False)
    assert not autotune.enabled()
    o, _ = cbm_layer(**inputs)
    torch.testing.assert_close(o, native_out(inputs)[0])  # "a", cache ignored
    cbm_layer(**helpers.make_inputs(**dict(SHAPE, B=1), dtype=torch.float32))
    assert len(fakes.measured()) == 2 and len(autotune.cache()) == 1


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_set_enabled_rejects_non_bool(bad):
    with pytest.raises(ValueError, match="set_enabled expects True or False"):
        autotune.set_enabled(bad)


def test_env_var_disables_at_import():
    root = Path(__file__).resolve().parents[1]
    code = "from deeprnn_cuda import autotune; print(autotune.enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = dict(os.environ, DEEPRNN_AUTOTUNE=value, PYTHONPATH=str(root))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_no_measurement_under_torch_compile(fakes):
    """Tracing uses the cached choice if there is one, else the static preference; it never measures."""
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)

    def step(**kw):
        o, c = cbm_layer(**kw)
        return o.sum() + c.sum()

    eager = native_out(inputs)
    want_a = eager[0].sum() + eager[1].sum()
    torch._dynamo.reset()
    try:
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(**inputs)
        torch.testing.assert_close(got, want_a)
        assert fakes.log == [("layer", "a", True, True)] and autotune.cache() == {}  # traced once, not timed
        step(**inputs)  # eager: measures, caches "b"
        torch._dynamo.reset()
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(**inputs)
        torch.testing.assert_close(got, 2 * want_a)
        assert len(fakes.measured()) == 2
    finally:
        torch._dynamo.reset()


def test_no_measurement_on_fake_tensors(fakes):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
        o, _ = cbm_layer(**inputs)
    assert o.shape == (3, 2, 3, 4, 4) and fakes.log == [("layer", "a", True, True)] and autotune.cache() == {}


def test_cpu_auto_is_native_without_measuring(monkeypatch):
    """The real CPU path: one compiled candidate, so auto is the native layer and nothing is timed."""
    def no_timer(fn):
        raise AssertionError("auto measured on the CPU")

    monkeypatch.setattr(autotune, "time_ms", no_timer)
    autotune.clear_cache()
    inputs = helpers.make_inputs(**SHAPE, dtype=torch.float32)
    assert backends.resolve_backend("auto", inputs["x"]) is _native.cbm_layer_native
    o, c = cbm_layer(**inputs, backend="auto")
    torch.testing.assert_close((o, c), native_out(inputs))
    assert autotune.cache() == {}


# ----------------------------------------------------------------------------------------------- on a GPU

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_auto_measures_once_per_shape_and_matches_reference(monkeypatch):
    probe = torch.zeros(1, 1, 1, 1, 1, device="cuda")
    names = [c.name for c in backends.auto_candidates(probe)]
    if names != ["native", "triton"]:
        pytest.skip(f"needs both the native CUDA and the Triton backend, have {names}")
    timed = []
    real = autotune.time_ms

    def counting(fn):
        timed.append(fn)
        return real(fn)

    monkeypatch.setattr(autotune, "time_ms", counting)
    autotune.clear_cache()
    try:
        for T, calls in ((3, 2), (3, 2), (4, 4)):
            inputs = helpers.make_inputs(**dict(SHAPE, T=T, C=8, H=8, W=8), dtype=torch.float32, device="cuda")
            o, c = cbm_layer(**inputs, backend="auto")
            assert len(timed) == calls
            wrt = list(inputs.values())
            got = [o, c, *torch.autograd.grad(o.sum() + (c * c).sum(), wrt)]
            ref_in = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
            ro, rc = cbm_layer_ref(**ref_in)
            ref = [ro, rc, *torch.autograd.grad(ro.sum() + (rc * rc).sum(), list(ref_in.values()))]
            for a, b in zip(got, ref):
                helpers.assert_close_rel(a, b, torch.float32, f"auto T={T}")
        cached = autotune.cache()
        assert len(cached) == 2
        for entry in cached.values():
            assert entry.backend in ("native", "triton")
            assert set(entry.times_ms) == {"native", "triton"} and all(t > 0 for t in entry.times_ms.values())
    finally:
        autotune.clear_cache()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_auto_does_not_measure_under_graph_capture(monkeypatch):
    def no_timer(fn):
        raise AssertionError("auto measured during CUDA graph capture")

    monkeypatch.setattr(autotune, "time_ms", no_timer)
    autotune.clear_cache()
    inputs = helpers.make_inputs(**dict(SHAPE, C=8, H=8, W=8), dtype=torch.float32, device="cuda")
    inputs = {k: v.detach() for k, v in inputs.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture (lazy inits)
        cbm_layer(**inputs, backend="native")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, _ = cbm_layer(**inputs, backend="auto")
    graph.replay()
    torch.cuda.synchronize()
    helpers.assert_close_rel(o, _native.cbm_layer_native(**inputs)[0], torch.float32, "captured o")
    assert autotune.cache() == {}
