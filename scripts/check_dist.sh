#!/usr/bin/env bash
# The builds users run, from a copy of the working tree (what a clone has: no build/, no .so):
#   1. `python -m build --sdist`, checked to carry the C++/CUDA sources and headers;
#   2. that sdist installed with `pip install --no-build-isolation` into a fresh venv;
#   3. `pip install --no-build-isolation .` (not editable) into another;
#   4. `pip wheel --no-build-isolation .` and its wheel installed into a third.
# Each install must import from its venv, run the native op against the reference, and record its build
# decisions; the wheel's library must hold no AVX instruction (it may run on any x86-64 CPU).
# The fresh venvs reuse the building Python's torch and dependencies (one .pth line) instead of downloading
# them again. DEEPRNN_FORCE_CPU=1 keeps it short; without it a found toolkit compiles the CUDA kernels twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(cd "$(dirname "${PY:-.venv/bin/python}")" && pwd)/$(basename "${PY:-.venv/bin/python}")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deeprnn-dist.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PATH="$(dirname "$PY"):$PATH"  # ninja, which torch's build runs by name
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

"$PY" - "$WORK/src" <<'EOF'
import os, shutil, subprocess, sys
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, text=True, check=True).stdout.split("\0")
for f in filter(os.path.isfile, files):
    os.makedirs(os.path.join(sys.argv[1], os.path.dirname(f)), exist_ok=True)
    shutil.copy2(f, os.path.join(sys.argv[1], f))
EOF

echo "== sdist"
"$PY" -m build --sdist --no-isolation --outdir "$WORK/dist" "$WORK/src" > "$WORK/sdist.log" 2>&1 ||
  { cat "$WORK/sdist.log"; exit 1; }
SDIST="$(ls "$WORK"/dist/*.tar.gz)"
listing="$(tar tzf "$SDIST")"
for f in setup.py pyproject.toml MANIFEST.in CMakeLists.txt deeprnn_cuda/_build_config.py csrc/ops.cpp csrc/cbm.h \
         csrc/cpu/cbm_cpu.cpp csrc/cuda/cbm_kernels.cu csrc/cuda/cbm_kernels.h csrc/cuda/cbm_persistent_impl.cuh; do
  grep -q "^[^/]*/$f\$" <<<"$listing" || { echo "sdist lacks $f"; exit 1; }
done
if grep -q '\.so$' <<<"$listing"; then echo "sdist carries a compiled library"; exit 1; fi
echo "$(basename "$SDIST"): $(wc -l <<<"$listing") entries, sources and headers present"

TORCH_SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
BASE_PY="$("$PY" -c 'import sys; print(sys._base_executable)')"
fresh_venv() {  # a venv without pip that sees the building Python's packages after its own
  "$BASE_PY" -m venv --without-pip "$1"
  echo "$TORCH_SITE" > "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_reuse_torch.pth"
}
pip_in() { local venv="$1"; shift; "$PY" -m pip --python "$venv/bin/python" "$@"; }
check_install() {  # the package imports from the venv, its op agrees with the reference, and it says how it was built
  (cd "$WORK" && "$1/bin/python" - "$1" <<'EOF'
import os, sys
import torch
import deeprnn_cuda
from deeprnn_cuda import _native
assert os.path.realpath(deeprnn_cuda.__file__).startswith(os.path.realpath(sys.argv[1])), deeprnn_cuda.__file__
assert _native.is_available(), _native.unavailable_reason()
info = _native.build_info()
assert set(info) == {"cuda_compiled", "cuda", "cpu", "threads"} and info["cuda_compiled"] == _native.cuda_compiled(), info
# The wheel's epilogues reach torch's threads where its build said so (-fopenmp under torch's OpenMP backend).
assert torch.ops.deeprnn.cpu_kernels_parallel() == info["threads"].startswith("CPU epilogues multithreaded"), info
torch.manual_seed(0)
x = torch.randn(3, 2, 2, 5, 5, dtype=torch.float64)
args = (torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
        torch.randn(4, 6, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
o, c = deeprnn_cuda.cbm_layer(x, *args, backend="native")
o_ref, c_ref = deeprnn_cuda.cbm_layer_ref(x, *args, c0=torch.zeros(2, 4, 5, 5, dtype=torch.float64))
assert torch.allclose(o, o_ref) and torch.allclose(c, c_ref), "native op disagrees with the reference"
print("imports from", os.path.dirname(deeprnn_cuda.__file__), "| native op matches the reference")
EOF
  ) && "$1/bin/deeprnn" info | grep -E "^(backend native|build):"
}

echo "== pip install --no-build-isolation <sdist> into a fresh venv"
fresh_venv "$WORK/venv-sdist"
pip_in "$WORK/venv-sdist" install -q --no-build-isolation --no-deps "$SDIST"
check_install "$WORK/venv-sdist"

echo "== pip install --no-build-isolation . into a fresh venv"
fresh_venv "$WORK/venv-tree"
pip_in "$WORK/venv-tree" install -q --no-build-isolation --no-deps "$WORK/src"
check_install "$WORK/venv-tree"

echo "== pip wheel --no-build-isolation . ; its wheel into a fresh venv"
pip_in "$WORK/venv-sdist" wheel -q --no-build-isolation --no-deps -w "$WORK/wheels" "$WORK/src"
WHEEL="$(ls "$WORK"/wheels/*.whl)"
fresh_venv "$WORK/venv-wheel"
pip_in "$WORK/venv-wheel" install -q --no-deps "$WHEEL"
check_install "$WORK/venv-wheel"
LIB="$(ls "$WORK"/venv-wheel/lib/python*/site-packages/deeprnn_cuda/_C*.so)"
if command -v objdump > /dev/null && [ "$(uname -m)" = x86_64 ]; then
  avx="$(objdump -d --no-show-raw-insn "$LIB" | grep -cE '%ymm|%zmm|vfmadd' || true)"
  [ "$avx" -eq 0 ] || { echo "the wheel's library has $avx AVX instructions"; exit 1; }
  echo "$(basename "$WHEEL"): no AVX instruction in $(basename "$LIB")"
fi
echo "dist round trip ok"
