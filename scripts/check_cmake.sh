#!/usr/bin/env bash
# Builds the op library with CMake (as a C++ user would) and runs its ops from a fresh process that never
# imports the Python package, comparing one CBM step with the formula written in plain ATen.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
BUILD="${BUILD_DIR:-build/cmake}"
TORCH_PREFIX="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
ARGS=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython3_EXECUTABLE="$(readlink -f "$PY")")
if "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  # A CUDA build of libtorch makes find_package(Torch) look for the toolkit, and for NVRTC, which pip's
  # torch wheels ship in site-packages rather than in the toolkit.
  CUDA_ROOT="${CUDA_HOME:-/usr/local/cuda}"
  NVRTC="$("$PY" -c 'import glob, os, site; print(next(iter(sorted(p for d in site.getsitepackages() for p in glob.glob(os.path.join(d, "nvidia", "**", "libnvrtc.so*"), recursive=True) if "builtins" not in p and ".alt." not in p)), ""))')"
  ARGS+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT")
  [ -n "$NVRTC" ] && ARGS+=(-DCUDA_nvrtc_LIBRARY="$NVRTC")
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
fi
cmake -S . -B "$BUILD" -G Ninja "${ARGS[@]}" ${CMAKE_ARGS:-}
cmake --build "$BUILD" -j "${MAX_JOBS:-$(nproc)}"
"$PY" - "$BUILD/libdeeprnn_ops.so" <<'PYEOF'
import sys

import torch
import torch.nn.functional as F

torch.ops.load_library(sys.argv[1])
torch.manual_seed(0)
x = torch.randn(1, 2, 3, 5, 5, dtype=torch.float64)
wr, wt = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, 7, 3, 3, dtype=torch.float64)
br, bt, c0 = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
o, c, r = torch.ops.deeprnn.cbm_forward(x, wr, br, wt, bt, c0, None, 1, 0, 0)
r_ref = F.conv2d(x[0], wr, br, padding=1).relu()
c_ref = torch.sigmoid(F.conv2d(torch.cat([x[0], c0], 1), wt, bt, padding=1))
assert torch.allclose(o[0], r_ref * c_ref) and torch.allclose(c[0], c_ref), "CMake-built op disagrees"
if "ATen parallel backend: OpenMP" in torch.__config__.parallel_info():
    assert torch.ops.deeprnn.cpu_kernels_parallel(), "CMake compiled the CPU epilogues without OpenMP: one thread"
print("cmake build ok: deeprnn::cbm_forward matches the ATen formula; cuda_compiled =",
      torch.ops.deeprnn.cuda_compiled())
PYEOF
