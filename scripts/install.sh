#!/usr/bin/env bash
# Sets up .venv in the repository root: torch, the test tools, and deeprnn_cuda installed in editable
# mode with its compiled extension (CUDA kernels included when nvcc and a CUDA build of torch are present).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip "setuptools>=64" wheel
.venv/bin/pip install -q "torch==2.14.1" ninja
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
MAX_JOBS="${MAX_JOBS:-$(nproc)}" .venv/bin/pip install -q --no-build-isolation -e ".[test]"
.venv/bin/python -m deeprnn_cuda info
