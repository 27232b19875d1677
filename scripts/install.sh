#!/usr/bin/env bash
# Sets up .venv in the repository root: torch, the test tools, and deeprnn_cuda installed in editable
# mode with its compiled extension (CUDA kernels included when setup.py finds a CUDA toolkit matching torch's;
# CUDA_HOME=... names one, DEEPRNN_FORCE_CPU=1 skips them, DEEPRNN_REQUIRE_CUDA=1 fails without them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# setuptools 77 is the first that reads pyproject.toml's SPDX `license` string.
.venv/bin/pip install -q --upgrade pip "setuptools>=77" wheel
# NumPy before the build: setup.py imports torch, which warns twice when it cannot find NumPy.
.venv/bin/pip install -q "torch==2.14.1" ninja numpy
jobs="${MAX_JOBS:-$(nproc)}"
# pip prints nothing while the extension compiles, so say beforehand what is coming and how long it takes
# (measured: about 2.5 minutes on 2 cores with the CUDA kernels, the whole script about 3.5).
echo "deeprnn_cuda: compiling the C++ extension with $jobs parallel jobs (its CUDA kernels too when a CUDA"
echo "  toolkit matching torch's is found); this takes a few minutes, about 2.5 on 2 cores, with no output."
if [ "${DEEPRNN_FORCE_CPU:-0}" != "1" ]; then
  echo "  On a machine without a GPU, DEEPRNN_FORCE_CPU=1 bash scripts/install.sh skips the CUDA kernels."
fi
MAX_JOBS="$jobs" .venv/bin/pip install -q --no-build-isolation -e ".[test]"
.venv/bin/python -m deeprnn_cuda info
