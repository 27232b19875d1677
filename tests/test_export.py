"""Export for deployment (issue 25, part 3): ``torch.export`` programs saved and loaded in a fresh process, and
``torch.onnx.export`` of modules on the compiled backend to a standard ONNX graph that onnxruntime runs."""
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._pytree import tree_leaves

from deeprnn_cuda import CBM, ConvGRU, ConvLSTM, _native
from deeprnn_cuda import triton as triton_backend
from deeprnn_cuda.models import DeepVideoPredictor, PatchRecurrentPredictor

BACKENDS = ["reference"] + (["native"] if _native.is_available() else [])
needs_native = pytest.mark.skipif(not _native.is_available(), reason="the compiled extension is not built")
# Triton runs under its interpreter on the CPU here (tests/conftest.py)
COMPILED = (["native"] if _native.is_available() else []) + (["triton"] if triton_backend.is_available() else [])


class AllCells(torch.nn.Module):
    """Every cell, bidirectional, on one input: one export covers them all."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.cells = torch.nn.ModuleList(cls(3, 4, bidirectional=True, backend=backend) for cls in (CBM, ConvLSTM, ConvGRU))

    def forward(self, x: torch.Tensor):
        return tuple(cell(x)[0] for cell in self.cells)


class Predict(torch.nn.Module):
    """A predictor's closed loop with the number of frames fixed."""

    def __init__(self, model: torch.nn.Module, num_future: int) -> None:
        super().__init__()
        self.model, self.num_future = model, num_future

    def forward(self, observed: torch.Tensor) -> torch.Tensor:
        return self.model(observed, self.num_future)


def _modules(backend: str):
    """``name -> (module in eval mode, example input)``: the stacks, a two-layer CBM stack with a shortcut and its
    final states, and both predictors, all tiny (exporting traces every step)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 3, 8, 8)
    modules = {
        "stacks": (AllCells(backend), x),
        "cbm": (CBM(3, 4, num_layers=2, shortcut_every=2, backend=backend), x),
        "patch_predictor": (Predict(PatchRecurrentPredictor(1, 4, 1, "convlstm", 2, backend=backend), 2),
                            torch.rand(1, 2, 1, 8, 8)),
        "video_predictor": (Predict(DeepVideoPredictor(1, 4, 1, "cbm", backend), 1), torch.rand(1, 2, 1, 16, 16)),
    }
    return {name: (module.eval(), x) for name, (module, x) in modules.items()}


@pytest.mark.slow
def test_torch_export_saved_programs_load_in_a_fresh_process(tmp_path):
    names = []
    for backend in BACKENDS:
        for name, (module, x) in _modules(backend).items():
            with torch.no_grad():
                expected = module(x)
            names.append(f"{backend}_{name}")
            torch.export.save(torch.export.export(module, (x,)), tmp_path / f"{names[-1]}.pt2")
            torch.save({"x": x, "expected": expected}, tmp_path / f"{names[-1]}.data")
    script = textwrap.dedent(f"""
        import sys, torch
        import deeprnn_cuda  # registers the deeprnn:: ops the programs call
        for name in {names!r}:
            data = torch.load(sys.argv[1] + "/" + name + ".data")
            got = torch.export.load(sys.argv[1] + "/" + name + ".pt2").module()(data["x"])
            torch.testing.assert_close(got, data["expected"], rtol=1e-5, atol=1e-6, msg=name)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@needs_native
def test_exported_native_program_calls_the_fused_ops():
    module, x = _modules("native")["stacks"]
    with torch.no_grad():
        graph = str(torch.export.export(module, (x,)).graph)
    for op in ("deeprnn.cbm_inference", "deeprnn.convlstm_inference", "deeprnn.convgru_inference"):
        assert op in graph


@pytest.mark.slow
@pytest.mark.parametrize("backend", COMPILED)
def test_onnx_export_of_compiled_modules_is_standard_and_matches_onnxruntime(tmp_path, backend):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    # the video predictor has the same cells as the others in a larger graph; Triton's ops, one module
    exported = ("stacks", "cbm", "patch_predictor") if backend == "native" else ("stacks",)
    for name, (module, x) in _modules(backend).items():
        if name not in exported:
            continue
        with torch.no_grad():
            expected = module(x)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, (x,), str(path), verbose=False)  # the default exporter, as a user calls it
        graph = onnx.load(str(path)).graph
        assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, name
        assert "Conv" in {node.op_type for node in graph.node}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert len(got) == len(tree_leaves(expected))
        for g, e in zip(got, tree_leaves(expected)):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-4, atol=1e-5, msg=name)


@needs_native
def test_decompositions_give_every_output_of_the_native_ops():
    """Each decomposition returns what its op returns, the outputs kept for backward included (CBM's r, the
    cells' gates), with every activation and merge of CBM."""
    from deeprnn_cuda import _decompositions
    from deeprnn_cuda._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    T, B, C_in, C, H, W = 3, 2, 3, 4, 5, 6
    x, h0, c0 = rnd(T, B, C_in, H, W), rnd(B, C, H, W), rnd(B, C, H, W)
    ops = torch.ops.deeprnn
    cases = [("convlstm_forward", (x, rnd(4 * C, C_in + C, 3, 3), rnd(4 * C), h0, c0)),
             ("convgru_forward", (x, rnd(3 * C, C_in, 3, 3), rnd(3 * C), rnd(3 * C, C, 3, 3), rnd(3 * C), h0))]
    cases += [("convlstm_inference", cases[0][1] + (all_states,)) for all_states in (True, False)]
    cases += [("convgru_inference", cases[1][1])]
    for act_r in ACT_R_CODES.values():
        for act_t in ACT_T_CODES.values():
            for merge in MERGE_CODES.values():
                args = (x, rnd(C, C_in, 3, 3), rnd(C), rnd(C, C_in + C, 3, 3), rnd(C), c0)
                cases.append(("cbm_forward", args + (None, act_r, act_t, merge)))
                cases.append(("cbm_inference", args + (act_r, act_t, merge, False)))
    for name, args in cases:
        got = _decompositions.NATIVE[name](*args)
        expected = getattr(ops, name)(*args)
        torch.testing.assert_close(got, expected, msg=f"{name} {args[-3:] if 'cbm' in name else ''}")
