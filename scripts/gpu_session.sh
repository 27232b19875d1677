#!/usr/bin/env bash
# One GPU session on the device machine (repository root as cwd): build the extension in place, print the
# backend info, run the GPU tests (CUDA kernels, persistent kernels, Triton, autotune), compute-sanitizer
# (memcheck on the step kernels; memcheck, racecheck and synccheck on the persistent kernels), a CUDA-graph
# on/off micro-benchmark, `python -m benchmarks.gpu`, and the CPU suite if time is left. Every log goes under
# $OUT: summary.txt, build.log, tests.log, sanitizer.log, bench.log, results_table.md. Total wall time stays
# under ~9 min: each stage runs under `timeout`, and stages are skipped when the remaining budget is too small.
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
if [ -z "${CUDA_HOME:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
  else
    CUDA_HOME=/usr/local/cuda
  fi
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

# 3. GPU tests (CUDA kernels, the persistent kernels, Triton, auto's per-shape choice).
stage "pytest -m cuda" "$OUT/tests.log" 240 60 "$PY" -m pytest -q -m cuda -rfE --durations=15 -p no:cacheprovider \
  tests/test_cuda.py tests/test_cuda_persistent.py tests/test_triton.py tests/test_autotune.py

# 5. compute-sanitizer memcheck on a small subset of the GPU tests (the fused kernels, scalar and vectorized,
#    every dtype; TD; the internal CUDA graphs).
SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
if [ -x "$SANITIZER" ]; then
  stage "compute-sanitizer memcheck" "$OUT/sanitizer.log" 150 60 "$SANITIZER" --tool memcheck --error-exitcode 9 \
    --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
    -k "(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and tanh-relu-add-tdnode) or test_internal_cuda_graphs or test_batch_one"
  # The persistent kernels: out-of-bounds accesses, shared-memory races between the block's phases, barriers.
  for tool in memcheck racecheck synccheck; do
    stage "compute-sanitizer $tool persistent" "$OUT/sanitizer.log" 90 40 "$SANITIZER" --tool "$tool" \
      --error-exitcode 9 --print-limit 20 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_persistent.py \
      -k "(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and bf16)"
  done
else
  echo "SKIP  compute-sanitizer (not found)" | tee -a "$SUMMARY"
fi

# 6. CUDA graphs on/off at the launch-bound canonical shapes (forward + backward, ms per call).
BENCH_PY="${TMPDIR:-/tmp}/deeprnn_graph_bench.py"
cat >"$BENCH_PY" <<'EOF'
import os, torch
from deeprnn_cuda import cbm_layer
torch.backends.cudnn.benchmark = True
def bench(C, HW, dtype, graphs, iters=20):
    os.environ["DEEPRNN_CUDA_GRAPHS"] = "1" if graphs else "0"
    T = B = 16
    x = torch.randn(T, B, C, HW, HW, device="cuda", dtype=dtype, requires_grad=True)
    wr = (torch.randn(C, C, 3, 3, device="cuda", dtype=dtype) * (9 * C) ** -0.5).requires_grad_()
    wt = (torch.randn(C, 2 * C, 3, 3, device="cuda", dtype=dtype) * (18 * C) ** -0.5).requires_grad_()
    br = torch.zeros(C, device="cuda", dtype=dtype, requires_grad=True)
    bt = torch.zeros(C, device="cuda", dtype=dtype, requires_grad=True)
    def step():
        o, c = cbm_layer(x, wr, br, wt, bt, backend="native")
        (o.float().sum() + c.float().sum()).backward()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        step()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / iters
print(torch.cuda.get_device_name(), "T=B=16, 3x3, forward+backward ms/call")
for C, HW in [(512, 7), (256, 14), (128, 28), (64, 56)]:
    for dtype in (torch.float32, torch.bfloat16):
        off, on = bench(C, HW, dtype, False), bench(C, HW, dtype, True)
        print(f"C={C:4d} {HW:2d}x{HW:<2d} {str(dtype):15s} plain {off:8.3f}  graphs {on:8.3f}  speedup {off / on:5.2f}x")
EOF
stage "cuda graphs on/off bench" "$OUT/bench.log" 90 30 "$PY" "$BENCH_PY"

# 7. The lead's benchmark runner, if present.
if [ -f benchmarks/gpu.py ] || [ -f benchmarks/gpu/__main__.py ]; then
  stage "benchmarks.gpu" "$OUT/bench.log" 240 30 "$PY" -m benchmarks.gpu --repeats 10 --out "$OUT/results_table.md"
else
  echo "SKIP  benchmarks.gpu (not present)" | tee -a "$SUMMARY"
fi

# 8. The CPU suite (everything not marked cuda), if time is left: CI runs it anyway.
stage "pytest cpu suite" "$OUT/tests.log" 120 40 "$PY" -m pytest -q -m "not cuda" -rfE -p no:cacheprovider tests

echo "total $(($(date +%s) - START))s" | tee -a "$SUMMARY"
# Failing test lines up front in the summary, for a quick read.
grep -hE "^(FAILED|ERROR)|[0-9]+ (passed|failed)|========= (ERROR|Invalid)" "$OUT/tests.log" "$OUT/sanitizer.log" \
  2>/dev/null | head -60 >>"$SUMMARY"
exit 0
