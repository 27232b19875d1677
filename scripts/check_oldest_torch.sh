#!/usr/bin/env bash
# The oldest supported torch (pyproject.toml's lower bound, and what the GPU machine carries: torch 2.11 with
# Triton 3.6): a throwaway venv (.venv-oldest), the extension built against it in a copy of the tree (its CUDA
# kernels too when a toolkit is found, as on the GPU machine), then the op, module and Triton-interpreter tests.
# CI runs this before the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OLDEST_TORCH="${OLDEST_TORCH:-2.11.0}"
OLDEST_TRITON="${OLDEST_TRITON:-3.6.0}"
VENV="$ROOT/.venv-oldest"

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip "setuptools>=77" wheel
"$VENV/bin/pip" install -q "torch==$OLDEST_TORCH" "triton==$OLDEST_TRITON" ninja "numpy<2.4" tqdm matplotlib pillow pytest

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work"
cd "$work"
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VENV/bin/python" setup.py -q build_ext --inplace
"$VENV/bin/python" -c "import torch, triton; print('oldest supported: torch', torch.__version__, 'triton', triton.__version__)"
"$VENV/bin/python" -m deeprnn_cuda info
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_functional.py tests/test_op_contract.py \
  tests/test_errors.py tests/test_modules.py tests/test_triton.py
