"""setup.py really compiles CUDA on the issue's layout: CUDA_HOME unset, and `nvcc` on PATH a wrapper script
whose folder has no CUDA headers (torch alone guesses that folder and fails with `cuda_runtime.h: No such file`).

The project's setup.py and _build_config.py build a stand-in source tree (one small .cpp, one small .cu) so that
the test takes seconds of nvcc, not the minutes of the real kernels; CI's install builds those with the same code.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_NVCC = Path("/usr/local/cuda/bin/nvcc")

OPS_CPP = r"""
#include <Python.h>
#include "deeprnn_build_info.h"

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&def);
  if (m != nullptr) PyModule_AddStringConstant(m, "build_info", DEEPRNN_BUILD_INFO);
  return m;
}
"""

PROBE_CU = r"""
#include <cuda_runtime.h>

__global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }

extern "C" int deeprnn_probe_launch() { twice<<<1, 1>>>(nullptr); return int(cudaGetLastError()); }
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build")
@pytest.mark.skipif(not os.access(REAL_NVCC, os.X_OK), reason="no CUDA toolkit at /usr/local/cuda")
def test_setup_py_compiles_cuda_through_a_wrapper_nvcc_with_cuda_home_unset(tmp_path):
    tree = tmp_path / "src"
    (tree / "deeprnn_cuda").mkdir(parents=True)
    (tree / "csrc" / "cuda").mkdir(parents=True)
    shutil.copy(ROOT / "setup.py", tree)
    shutil.copy(ROOT / "deeprnn_cuda" / "_build_config.py", tree / "deeprnn_cuda")
    (tree / "csrc" / "ops.cpp").write_text(OPS_CPP)
    (tree / "csrc" / "cuda" / "probe.cu").write_text(PROBE_CU)
    wrapper_bin = tmp_path / "usr" / "local" / "bin"
    wrapper_bin.mkdir(parents=True)
    (wrapper_bin / "nvcc").write_text(f'#!/bin/sh\nexec "{REAL_NVCC}" "$@"\n')
    (wrapper_bin / "nvcc").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "DEEPRNN_FORCE_CPU")}
    # The wrapper first; then the venv (ninja) and the system compilers. No other nvcc is on this PATH.
    env.update(PATH=os.pathsep.join([str(wrapper_bin), os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
               TORCH_CUDA_ARCH_LIST="8.0", MAX_JOBS="2", DEEPRNN_REQUIRE_CUDA="1")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "cuda_runtime.h: No such file" not in out
    print(out)
    line = next(x for x in out.splitlines() if x.startswith("deeprnn_cuda: CUDA kernels"))
    home = line.split(" toolkit at ")[1].split(" ")[0]
    assert line.startswith(f"deeprnn_cuda: CUDA kernels compiled with the CUDA {torch.version.cuda} toolkit at ")
    assert os.path.realpath(home) == os.path.realpath(REAL_NVCC.parent.parent)
    assert f"skipped {tmp_path / 'usr' / 'local'}: no include/cuda_runtime.h" in line
    assert "probe.cu" in out  # nvcc compiled the .cu file

    (lib,) = (tree / "deeprnn_cuda").glob("_C*.so")
    spec = importlib.util.spec_from_file_location("deeprnn_cuda._C", lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = json.loads(module.build_info)
    assert info["cuda_compiled"] is True and info["cuda"] == line[len("deeprnn_cuda: "):]
    assert info["cpu"].startswith("CPU kernels")
