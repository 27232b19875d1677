"""Every Triton configuration the autotuner can pick compiles for real GPUs and fits their shared memory
(issue 23, section 4).

The whole sweep (every kernel, every configuration, sm_80 and sm_90) is ``python -m benchmarks.triton_compile
--sweep``: hours of CPU, beyond CI's budget, so CI checks here that the sweep lists every configuration a
launch can reach (the launchers' own autotune lists and pruning, the launch plans' tiles) and compiles a sample
of the riskiest ones (the most shared memory) for both architectures. Results: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set, Tuple

import pytest
import torch

triton = pytest.importorskip("triton")
from deeprnn_cuda import triton as tb  # noqa: E402
from deeprnn_cuda.triton import cell_kernels, config_sweep, kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not tb.is_available(), reason=tb.unavailable_reason() or "no Triton backend")

Signature = Tuple[int, int, int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages

#: shapes at both ends: nothing pruned by the shape caps (BIG); everything the caps can drop dropped (SMALL)
BIG = dict(B=64, C=4096, H=512, W=512)
SMALL = dict(B=1, C=1, H=1, W=1)


def _signature(config, tile=None) -> Signature:
    k = {**config.kwargs, **(tile or {})}
    return k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], config.num_warps, config.num_stages


def _reachable(tuner, tiles=({},)) -> Set[Signature]:
    """What ``tuner`` (a ``triton.autotune`` launcher) can pick at either end of the shapes, at each tile."""
    return {_signature(c, tile) for shape in (BIG, SMALL) for c in tuner.early_config_prune(tuner.configs, shape)
            for tile in tiles}


def test_sweep_lists_every_configuration_a_launch_can_pick(monkeypatch):
    monkeypatch.delenv("DEEPRNN_TRITON_MAX_CONFIGS", raising=False)
    swept: Dict[str, Set[Signature]] = {}
    for v in config_sweep.variants():
        swept.setdefault(v.kernel, set()).add(_signature(v.config))

    cbm = kernels.Launchers(autotune=True)
    cells = cell_kernels.CellLaunchers(autotune=True)
    monkeypatch.setattr(cell_kernels, "LAUNCHERS", cells)
    old_mode = kernels.set_mode("multi")
    try:
        # the multi-step tiles come from the launch plans, at the smallest and the largest shape
        cbm_tiles = [kernels._launch_plan(cbm, s["C"], s["H"], s["W"], s["B"])[2] for s in (BIG, SMALL)]
        cell_tiles = {gates: [cell_kernels._plan(torch.zeros(1), s["B"], s["C"], s["H"], s["W"], 3, gates)[2]
                              for s in (BIG, SMALL)] for gates in (2, 4)}
    finally:
        kernels.set_mode(old_mode)
    expected = {name: _reachable(getattr(cbm, name)) for name in ("fwd_step", "bwd_step")}
    expected.update({name: _reachable(getattr(cbm, name), cbm_tiles) for name in ("fwd_seq", "bwd_seq")})
    for name in cell_kernels.CellLaunchers.NAMES:
        tiles = cell_tiles[4 if name.startswith("lstm") else 2] if name.endswith("seq") else ({},)
        expected[name] = _reachable(getattr(cells, name), tiles)
    assert swept == expected


#: shared memory the sweep measured for the ConvLSTM's single-step kernel in fp32/tf32 (benchmarks/RESULTS.md):
#: {(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): (sm_80 bytes, sm_90 bytes)}
LSTM_MEASURED = {(64, 64, 32, 4, 4): (122880, 163840), (64, 64, 64, 4, 3): (163840, 245760)}
LIMITS = {80: 163 * 1024, 90: 227 * 1024}  # the devices' opt-in maximum per block: A100, H100/H200


def test_cells_prune_the_configurations_that_do_not_fit(monkeypatch):
    monkeypatch.delenv("DEEPRNN_TRITON_MAX_CONFIGS", raising=False)
    for (bm, bn, bk, warps, stages), measured in LSTM_MEASURED.items():
        config = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        assert [cell_kernels.pipeline_bytes(config, cap) for cap in (80, 90)] == list(measured)
        assert cell_kernels.fits_cells(config) == all(b <= LIMITS[cap] for cap, b in zip((80, 90), measured))
    tuner = cell_kernels.CellLaunchers(autotune=True).lstm_fwd_step
    kept = _reachable(tuner)
    assert (64, 64, 32, 4, 4) in kept and (64, 64, 64, 4, 3) not in kept  # 240 KB on sm_90


#: the riskiest configurations (benchmarks/RESULTS.md): the most shared memory (CBM's largest single-step
#: tile), the ConvLSTM's four gate accumulators on the 4-stage pipeline, and the smallest multi-step tile with
#: 8 warps and BLOCK_K 64 (three compiles per architecture: a few CPU-minutes in all)
SAMPLE = ["fwd_step 128x128x64 w8 s3", "lstm_fwd_step 64x64x32 w4 s4", "gru_fwd_seq 16x16x64 w8 s3"]


def test_sample_is_swept():
    labels = {v.label for v in config_sweep.variants()}
    assert set(SAMPLE) <= labels


@pytest.mark.slow
@pytest.mark.parametrize("capability", [80, 90])
def test_riskiest_configurations_compile_and_fit(capability, tmp_path):
    """Compile the sample to cubins (no GPU: Triton's bundled ptxas) in a process without TRITON_INTERPRET and
    check each one's shared memory against the device limit (A100 163 KB, H100/H200 227 KB)."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    code = ("import sys\n"
            "from deeprnn_cuda.triton import config_sweep as s\n"
            "by_label = {v.label: v for v in s.variants()}\n"
            "for label in sys.argv[2:]:\n"
            "    shared = s.compile_variant(by_label[label], 'fp32', 'tf32', int(sys.argv[1])).metadata.shared\n"
            "    print(label, '|', shared, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(capability), *SAMPLE], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    shared = {line.split(" | ")[0]: int(line.split(" | ")[1]) for line in proc.stdout.splitlines() if " | " in line}
    assert set(shared) == set(SAMPLE)
    assert {label: b for label, b in shared.items() if b > LIMITS[capability]} == {}
