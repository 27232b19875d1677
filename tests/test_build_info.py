"""The extension records setup.py's decisions, `deeprnn info` shows them, and the build in use missed no toolkit."""
import os
import platform
import subprocess
import sys

import pytest
import torch

from deeprnn_cuda import _build_config, _native
from deeprnn_cuda.backends import backend_status

pytestmark = pytest.mark.skipif(not _native.is_available(), reason="the extension is not built")


def _recorded():
    info = _native.build_info()
    if not info:
        pytest.fail("the extension records no build decisions: rebuild it with setup.py (pip install -e .)")
    return info


def test_the_record_matches_the_compiled_extension():
    info = _recorded()
    assert set(info) == {"cuda_compiled", "cuda", "cpu", "threads"}
    assert info["cuda_compiled"] == _native.cuda_compiled()
    assert info["cuda"].startswith("CUDA kernels compiled" if info["cuda_compiled"] else "CUDA kernels not compiled: ")
    assert info["cpu"].startswith(("CPU kernels AVX2+FMA: ", "CPU kernels AVX-512+AVX2+FMA: ", "CPU kernels portable"))


def test_info_shows_why_cuda_kernels_are_missing_or_which_toolkit_built_them():
    info = _recorded()
    done = subprocess.run([sys.executable, "-m", "deeprnn_cuda", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"build: {info['cpu']}" in done.stdout.splitlines()
    assert f"build: {info['threads']}" in done.stdout.splitlines()
    if info["cuda_compiled"]:
        assert f"build: {info['cuda']}" in done.stdout.splitlines()
    else:
        assert backend_status()["native"] == f"available (CPU only; {info['cuda']})"
        assert f"backend native: available (CPU only; {info['cuda']})" in done.stdout.splitlines()


def test_the_build_in_use_did_not_miss_a_usable_toolkit():
    """A CPU-only extension is right only when it was asked for or no toolkit is usable here now (CI's install
    builds with CUDA_HOME unset; on a machine whose nvcc is a wrapper script this is the issue-17 layout)."""
    info = _recorded()
    if info["cuda_compiled"]:
        return  # nothing was missed
    if _build_config.FORCE_CPU in info["cuda"]:
        pytest.skip(f"built CPU-only on purpose ({info['cuda']})")
    env = {k: v for k, v in os.environ.items() if k not in (_build_config.FORCE_CPU, _build_config.REQUIRE_CUDA)}
    now = _build_config.decide_cuda(env, torch.version.cuda, getattr(torch.version, "hip", None))
    assert not now.use_cuda, f"built CPU-only ({info['cuda']}) although {now.line()}"


def test_the_cpu_epilogues_reach_torchs_threads():
    """Without -fopenmp under torch's OpenMP backend, at::parallel_for compiles to a serial loop: every fused CPU
    epilogue silently ran on one thread. The compiled library must agree with what this torch needs."""
    info = _recorded()
    needed = _build_config.decide_cpu_threads(
        _build_config.torch_parallel_backend(torch.__config__.parallel_info()), platform.system())
    assert torch.ops.deeprnn.cpu_kernels_parallel() == needed.parallel, (info["threads"], needed.line())
    assert info["threads"] == needed.line()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_one_openmp_runtime_in_the_process():
    """The -fopenmp library must bind to the OpenMP runtime torch loaded (same soname), not load a second one
    whose threads would compete with torch's."""
    code = ("import re, torch, deeprnn_cuda._C\n"
            "maps = open('/proc/self/maps').read().split()\n"
            "print('\\n'.join(sorted({p for p in maps if re.search(r'lib(g|i)?omp[^/]*\\.so', p)})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runtimes = done.stdout.split()
    assert len(runtimes) <= 1, runtimes
