#!/usr/bin/env bash
# Sets up .venv in the repository root: torch, the test tools, and deeprnn_cuda installed in editable
# mode with its compiled extension (CUDA kernels included when setup.py finds a CUDA toolkit matching torch's;
# CUDA_HOME=... names one, DEEPRNN_FORCE_CPU=1 skips them, DEEPRNN_REQUIRE_CUDA=1 fails without them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip "setuptools>=64" wheel
.venv/bin/pip install -q "torch==2.14.1" ninja
MAX_JOBS="${MAX_JOBS:-$(nproc)}" .venv/bin/pip install -q --no-build-isolation -e ".[test]"
.venv/bin/python -m deeprnn_cuda info
