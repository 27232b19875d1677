#!/usr/bin/env bash
# One short GPU lease (device tool: 15 minutes in all, the machine's start included), in the repository root:
#
#   bash scripts/gpu_session.sh            part 1, ends within 6 minutes: build, the op contract on CUDA (fake
#                                          kernels' strides for every layout, final states, opcheck), the native
#                                          CUDA tests (step and persistent kernels, the cell epilogues),
#                                          compute-sanitizer on this project's kernels, the native-paths table,
#                                          the backends table without Triton, then the quick Triton tests if time
#                                          is left
#   bash scripts/gpu_session.sh --part 2   what part 1 leaves out: Triton tests and tables, the slow GPU tests,
#                                          every canonical shape of both tables, the 15-layer training step
#   bash scripts/gpu_session.sh --only STAGE[,STAGE...]    those stages alone (a rerun after a fix)
#   bash scripts/gpu_session.sh --dry-run [--part N]       no GPU needed: prints each stage's planned budget and
#                                          checks that it can start (its tests are collected, its script runs)
#
# Ordered by value for never-run kernels, every stage under a time limit (SIGINT first, so pytest prints its
# summary; SIGKILL 15 s later), skipped when too little of the part's budget is left. Nothing is lost when a stage
# is cut: unbuffered, verbose output appended to the logs as it comes, benchmark rows appended as measured.
# Outputs (at most 8 files, directly under $OUT): summary.txt (first lines: one status per stage), build.log,
# tests.log, sanitizer.log, bench.log, native_paths.md, backends.md, backends_triton.md.
# The GPU machine's python3 has torch 2.11 (CUDA 13.0), Triton 3.6 and nvcc 13.0, and no network.
set -u

PART=1
ONLY=""
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --part) PART="${2:-}"; shift 2 ;;
    --only) ONLY="${2:-}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_session.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PART" in 1|2) ;; *) echo "gpu_session.sh: --part must be 1 or 2, got '$PART'" >&2; exit 2 ;; esac

OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
PY="${PYTHON:-python3}"
START=$(date +%s)
# Part 1 must end within 6 minutes (a second, corrected run then still fits the lease); part 2 uses one full
# 10-minute command. GPU_SESSION_BUDGET_S overrides.
if [ "$PART" = 1 ]; then DEFAULT_BUDGET=330; else DEFAULT_BUDGET=560; fi
BUDGET="${GPU_SESSION_BUDGET_S:-$DEFAULT_BUDGET}"

export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
# Autotuning compiles every configuration cold, per shape and dtype: two per kernel keep a short lease for tests.
export DEEPRNN_TRITON_MAX_CONFIGS="${DEEPRNN_TRITON_MAX_CONFIGS:-2}"
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

SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
# Only this project's kernels (namespace deeprnn in their mangled names): cuDNN and ATen stay uninstrumented.
if [ -x "$SANITIZER" ] && ! "$SANITIZER" --help 2>/dev/null | grep -q -- "--kernel-name"; then
  SAN_FILTER=(--filter kns=deeprnn)
else
  SAN_FILTER=(--kernel-name kns=deeprnn)
fi
PYTEST=("$PY" -m pytest -v -rfEs --durations=10 -p no:cacheprovider)
CUDA_TESTS=(tests/test_cuda.py tests/test_cuda_persistent.py)
[ -f tests/test_cuda_cells.py ] && CUDA_TESTS+=(tests/test_cuda_cells.py)
TRITON_TESTS=(tests/test_triton.py tests/test_autotune.py)
[ -f tests/test_triton_cells.py ] && TRITON_TESTS+=(tests/test_triton_cells.py)
[ -f tests/test_cell_autotune.py ] && TRITON_TESTS+=(tests/test_cell_autotune.py)
STEP_SELECTION="(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and tanh-relu-add-tdnode) or test_internal_cuda_graphs or test_batch_one"
PERSISTENT_SELECTION="(test_matches_reference and relu-sigmoid-mul-tdsample) or (test_half_matches_reference and bf16)"

left() { echo $((BUDGET - ($(date +%s) - START))); }
BUILD_FAILED=0
PLANNED=0

# What a stage's log says in one line: pytest's closing counts, the sanitizer's error summary, or nothing.
outcome() {
  grep -aE "^=+ .*(passed|failed|error|skipped|deselected|no tests ran).* =+$|ERROR SUMMARY|Error: " "$1" |
    tail -1 | sed -E 's/^=+ //; s/ =+$//'
}

# stage NAME PART PLAN_S LIMIT_S MIN_LEFT_S LOG KIND CMD... : PLAN_S is the expected duration on the H200 machine
# (an estimate until a session measures it), LIMIT_S the cap; KIND is pytest (dry run: collect its selection),
# module (dry run: --help), build or sanitizer. Runs CMD under its limit (capped by the part's time left),
# appending to LOG, and appends one status line to the summary.
stage() {
  local name="$1" part="$2" plan="$3" limit="$4" need="$5" log="$6" kind="$7"
  shift 7
  if [ -n "$ONLY" ]; then
    case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  elif [ "$part" != "$PART" ] && [ "$part" != all ]; then
    return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then
    dry_check "$name" "$plan" "$limit" "$log" "$kind" "$@"
    return 0
  fi
  local remaining
  remaining=$(left)
  if [ "$BUILD_FAILED" = 1 ] && [ "$kind" != build ]; then
    printf '%-8s %-30s (the build failed)\n' SKIP "$name" | tee -a "$SUMMARY"
    return 0
  fi
  if [ "$remaining" -lt "$need" ]; then
    printf '%-8s %-30s (only %ss of the budget left, needs %ss)\n' SKIP "$name" "$remaining" "$need" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt $((remaining - 5)) ] && limit=$((remaining - 5))
  local start_byte=0
  [ -f "$log" ] && start_byte=$(stat -c %s "$log")
  {
    echo
    echo "=================== $name ($(date -u +%H:%M:%S), limit ${limit}s) ==================="
    echo "\$ $*"
  } >>"$log"
  local t0
  t0=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local status=OK
  [ $rc -ne 0 ] && status=FAIL
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=TIMEOUT
  [ "$kind" = build ] && [ $rc -ne 0 ] && BUILD_FAILED=1
  local part_log
  part_log=$(mktemp)
  tail -c +$((start_byte + 1)) "$log" >"$part_log"
  if [ "$kind" = sanitizer ] && grep -aqiE "not supported|unable to|could not" "$part_log" &&
    ! grep -aq "ERROR SUMMARY" "$part_log"; then
    status=REFUSED  # compute-sanitizer refuses the device on some machines of this kind
  fi
  printf '%-8s %-30s rc=%-3s %4ss  %s  (%s)\n' "$status" "$name" "$rc" "$(($(date +%s) - t0))" \
    "$(outcome "$part_log")" "$(basename "$log")" | tee -a "$SUMMARY"
  rm -f "$part_log"
}

# The dry run: the stage's planned budget, and a check that it can start at all.
dry_check() {
  local name="$1" plan="$2" limit="$3" log="$4" kind="$5"
  shift 5
  PLANNED=$((PLANNED + plan))
  local check="ok"
  case "$kind" in
    pytest | sanitizer)
      # The pytest command itself (from "$PY" on, past a sanitizer's own arguments), collecting only: the
      # selection must hold at least one test.
      local args=("$@")
      while [ ${#args[@]} -gt 0 ] && [ "${args[0]}" != "$PY" ]; do args=("${args[@]:1}"); done
      local n
      n=$("${args[@]}" --collect-only -qq 2>/dev/null | grep -cE "::")
      if [ "$n" -lt 1 ]; then check="FAILED: selects no test"; DRY_FAILED=1; else check="collects $n tests"; fi
      ;;
    module)
      if "$@" --help >/dev/null 2>&1; then check="--help runs"; else check="FAILED: --help does not run"; DRY_FAILED=1; fi
      ;;
    build) check="planned: $*" ;;
  esac
  printf '%-30s plan %4ss  limit %4ss  %-14s %s\n' "$name" "$plan" "$limit" "$(basename "$log")" "$check"
}

DRY_FAILED=0
if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_session.sh --dry-run: part $PART, budget ${BUDGET}s (stage, planned and maximum seconds, log, check)"
else
  : >"$SUMMARY"
  echo "gpu_session.sh part ${PART}${ONLY:+ (only $ONLY)}: started $(date -u), budget ${BUDGET}s" | tee -a "$SUMMARY"
fi

# ---- both parts: build (incremental: a warm machine keeps build/), then what was compiled -------------------
stage build all 100 240 60 "$OUT/build.log" build "$PY" setup.py build_ext --inplace
stage info all 10 30 20 "$OUT/build.log" module "$PY" -m deeprnn_cuda info

# ---- part 1: the never-run native kernels first ---------------------------------------------------------------
# The op contract on CUDA before anything else: every op's outputs against its fake kernel for every input layout
# (channels_last weights included; the inference's final state alone without all_states), opcheck of every op.
stage cuda-contract 1 30 60 30 "$OUT/tests.log" pytest "${PYTEST[@]}" -m cuda tests/test_op_layouts.py \
  tests/test_cuda_cells.py::test_inference_final_state_only
stage cuda-tests 1 60 90 40 "$OUT/tests.log" pytest "${PYTEST[@]}" -m "cuda and not slow" "${CUDA_TESTS[@]}"
for tool in memcheck racecheck synccheck; do
  stage "sanitizer-$tool-persistent" 1 25 45 25 "$OUT/sanitizer.log" sanitizer \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" "${SAN_FILTER[@]}" --error-exitcode 9 \
    --print-limit 20 "${PYTEST[@]}" -x tests/test_cuda_persistent.py -k "$PERSISTENT_SELECTION"
done
stage sanitizer-memcheck-step 1 25 45 25 "$OUT/sanitizer.log" sanitizer \
  env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck "${SAN_FILTER[@]}" --error-exitcode 9 \
  --print-limit 20 "${PYTEST[@]}" -x tests/test_cuda.py -k "$STEP_SELECTION"
stage native-paths-table 1 25 40 25 "$OUT/bench.log" module "$PY" -m benchmarks.native_paths --repeats 5 \
  --shapes M,XS --out "$OUT/native_paths.md"
stage backends-table 1 40 60 30 "$OUT/bench.log" module "$PY" -m benchmarks.gpu --repeats 5 \
  --contenders "native,native persistent,torch.compile(reference)" --compile-dtypes float32 --no-stack --no-cells \
  --out "$OUT/backends.md"
stage triton-tests-quick 1 60 90 30 "$OUT/tests.log" pytest "${PYTEST[@]}" -m "cuda and not slow" "${TRITON_TESTS[@]}"

# ---- part 2: Triton, the slow tests, every canonical shape, the 15-layer step ----------------------------------
stage triton-tests 2 150 200 60 "$OUT/tests.log" pytest "${PYTEST[@]}" -m "cuda" "${TRITON_TESTS[@]}"
stage backends-table-triton 2 120 150 60 "$OUT/bench.log" module "$PY" -m benchmarks.gpu --repeats 10 \
  --contenders "native,native persistent,triton,torch.compile(reference)" --out "$OUT/backends_triton.md"
stage cuda-tests-slow 2 60 90 40 "$OUT/tests.log" pytest "${PYTEST[@]}" -m "cuda and slow" "${CUDA_TESTS[@]}"
stage native-paths-table-all 2 60 90 40 "$OUT/bench.log" module "$PY" -m benchmarks.native_paths --repeats 10 \
  --out "$OUT/native_paths.md"
stage sanitizer-memcheck-triton 2 40 60 40 "$OUT/sanitizer.log" sanitizer \
  env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 9 --print-limit 20 \
  "${PYTEST[@]}" -x tests/test_triton.py -k "test_cuda_both_paths_small"

if [ "$DRY_RUN" = 1 ]; then
  echo "planned: ${PLANNED}s in all, budget ${BUDGET}s (a stage that would start with less than its minimum left is skipped)"
  exit "$DRY_FAILED"
fi

{
  echo "total $(($(date +%s) - START))s"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  echo "CUDA_HOME=$CUDA_HOME nvcc: $(nvcc --version 2>&1 | tail -1)"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS DEEPRNN_TRITON_MAX_CONFIGS=$DEEPRNN_TRITON_MAX_CONFIGS"
  echo "sanitizer: $SANITIZER ${SAN_FILTER[*]}"
  echo
  # Failing tests and sanitizer errors, for a quick read.
  grep -ahE "^(FAILED|ERROR) |========= (ERROR|Invalid|Race|Barrier)" "$OUT/tests.log" "$OUT/sanitizer.log" 2>/dev/null | head -60
} >>"$SUMMARY" 2>&1
exit 0
