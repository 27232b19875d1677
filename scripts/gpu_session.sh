#!/usr/bin/env bash
# One GPU session on the device machine (repository root as cwd), most important first: build the extension in
# place, print the backend info, run the quick GPU tests (CUDA kernels, persistent kernels, Triton, autotune),
# the benchmark tables (benchmarks.gpu: backends side by side; benchmarks.native_paths: the native op's paths),
# compute-sanitizer (memcheck on the step kernels; memcheck, racecheck and synccheck on the persistent
# kernels), the slow GPU tests and the CPU suite. Logs under $OUT: summary.txt, build.log, tests.log,
# sanitizer.log, bench.log, results_table.md, native_paths.md. Total wall time stays under ~9 min
# (GPU_SESSION_BUDGET_S): each stage runs under `timeout`, and is skipped when too little time is left.
set -u

OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_SESSION_BUDGET_S:-530}"

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
# The toolkit root: $CUDA_HOME if set, else the first candidate with the runtime headers (nvcc on PATH may be a
# wrapper script in /usr/local/bin, so its parent directory is not necessarily the toolkit).
if [ -z "${CUDA_HOME:-}" ]; then
  NVCC_DIR=""
  command -v nvcc >/dev/null 2>&1 && NVCC_DIR="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  for candidate in /usr/local/cuda "$NVCC_DIR" /usr/local/cuda-*; do
    if [ -n "$candidate" ] && [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ]; then
      CUDA_HOME="$candidate"
      break
    fi
  done
  CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME LOG TIMEOUT_S MIN_LEFT_S CMD...: runs CMD under timeout (capped by the time left), appends its
# output to LOG and one status line to the summary.
stage() {
  local name="$1" log="$2" limit="$3" need="$4"
  shift 4
  local remaining
  remaining=$(left)
  if [ "$remaining" -lt "$need" ]; then
    echo "SKIP  $name (only ${remaining}s left)" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt $((remaining - 5)) ] && limit=$((remaining - 5))
  {
    echo
    echo "=================== $name ($(date -u +%H:%M:%S), limit ${limit}s) ==================="
    echo "\$ $*"
  } >>"$log"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local status=OK
  [ $rc -ne 0 ] && status=FAIL
  [ $rc -eq 124 ] && status=TIMEOUT
  printf '%-7s %-28s rc=%-3s %4ss  (%s)\n' "$status" "$name" "$rc" "$(($(date +%s) - t0))" "$(basename "$log")" |
    tee -a "$SUMMARY"
  return 0
}

{
  echo "gpu_session.sh started $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  echo "CUDA_HOME=$CUDA_HOME nvcc: $(nvcc --version 2>&1 | tail -1)"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
} >>"$SUMMARY" 2>&1

# 1. Build in place (a fresh build: the working tree may carry a CPU-only _C from elsewhere).
rm -rf build deeprnn_cuda/_C*.so
stage build "$OUT/build.log" 300 60 "$PY" setup.py build_ext --inplace
"$PY" -c "import deeprnn_cuda._native as n; print('cuda_compiled', n.cuda_compiled())" >>"$SUMMARY" 2>&1

# 2. Backend info.
stage info "$OUT/tests.log" 60 30 "$PY" -m deeprnn_cuda info

# 3. GPU tests, the quick ones (CUDA kernels of every cell, the persistent kernels, Triton, auto's per-shape choice).
GPU_TESTS=(tests/test_cuda.py tests/test_cuda_cells.py tests/test_cuda_persistent.py tests/test_triton.py tests/test_autotune.py)
stage "pytest -m cuda (quick)" "$OUT/tests.log" 200 60 "$PY" -m pytest -q -m "cuda and not slow" -rfE \
  --durations=15 -p no:cacheprovider "${GPU_TESTS[@]}"

# 4. The benchmark tables: backends side by side (issue 3's table), then the native op's paths.
stage "benchmarks.gpu" "$OUT/bench.log" 200 40 "$PY" -m benchmarks.gpu --repeats 10 --out "$OUT/results_table.md"
stage "benchmarks.native_paths" "$OUT/bench.log" 90 30 "$PY" -m benchmarks.native_paths --repeats 10 \
  --out "$OUT/native_paths.md"

# 5. compute-sanitizer: memcheck on the step kernels (scalar and vectorized, every dtype, TD, internal graphs);
#    memcheck, racecheck (shared memory between a block's phases) and synccheck on the persistent kernels.
SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
if [ -x "$SANITIZER" ]; then
  stage "compute-sanitizer memcheck" "$OUT/sanitizer.log" 120 40 "$SANITIZER" --tool memcheck --error-exitcode 9 \
    --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
    -k "(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and tanh-relu-add-tdnode) or test_internal_cuda_graphs or test_batch_one"
  for tool in memcheck racecheck synccheck; do
    stage "compute-sanitizer $tool persistent" "$OUT/sanitizer.log" 90 30 "$SANITIZER" --tool "$tool" \
      --error-exitcode 9 --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_persistent.py \
      -k "(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and bf16)"
  done
else
  echo "SKIP  compute-sanitizer (not found)" | tee -a "$SUMMARY"
fi

# 6. The slow GPU tests (canonical shapes), then the CPU suite (CI runs it anyway), as time allows.
stage "pytest -m cuda (slow)" "$OUT/tests.log" 200 60 "$PY" -m pytest -q -m "cuda and slow" -rfE --durations=15 \
  -p no:cacheprovider "${GPU_TESTS[@]}"
stage "pytest cpu suite" "$OUT/tests.log" 120 40 "$PY" -m pytest -q -m "not cuda" -rfE -p no:cacheprovider tests

echo "total $(($(date +%s) - START))s" | tee -a "$SUMMARY"
# Failing test lines up front in the summary, for a quick read.
grep -hE "^(FAILED|ERROR)|[0-9]+ (passed|failed)|========= (ERROR|Invalid)" "$OUT/tests.log" "$OUT/sanitizer.log" \
  2>/dev/null | head -60 >>"$SUMMARY"
exit 0
