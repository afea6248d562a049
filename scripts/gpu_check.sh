#!/usr/bin/env bash
# The one script for a lent GPU machine: builds fastxf against that machine's
# own torch, runs the CUDA tests (and a compute-sanitizer pass), runs the
# benchmarks, and leaves logs + results JSON in $OUT (at most 8 files come back).
#   STEPS="build tests sanitizer bench"   which steps to run (default: all)
#   BENCH_ONLY=norm,attention_decode      subset of benchmarks/run_all.py
#   FASTXF_COMMIT=<sha>                   recorded in the results (git may be missing there)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
STEPS=${STEPS:-build tests sanitizer bench}
export PYTHONUNBUFFERED=1 PYTHONPATH=python:. FASTXF_COMMIT=${FASTXF_COMMIT:-unknown}
LOG="$OUT/gpu.log"
step() { echo "=== $* [$(date +%T)]" | tee -a "$LOG"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } 2>&1 | tee -a "$LOG"

if has build; then
  step "build (sm_90a, ptxas -v)"
  TORCH_CUDA_ARCH_LIST=9.0a FASTXF_JOBS=16 PYTHON=python3 FASTXF_BUILD_DIR=build/gpu \
    scripts/dev_build.sh -DFASTXF_PTXAS_VERBOSE=ON -DFASTXF_CUDA=ON >"$OUT/build.log" 2>&1
  rc=$?; tail -3 "$OUT/build.log" | tee -a "$LOG"
  grep -E "spill|Compiling entry|Used" "$OUT/build.log" | grep -B1 -E "[1-9][0-9]* bytes spill" | tee -a "$LOG"
  [ $rc -eq 0 ] || { step "BUILD FAILED"; exit 1; }
  python3 -m fastxf info 2>&1 | tee -a "$LOG"
fi

if has tests; then
  step "CUDA tests"
  timeout 300 python3 -m pytest -q -m cuda -p no:cacheprovider -rfE tests/ 2>&1 | tail -60 | tee -a "$LOG"
fi

if has sanitizer; then
  step "compute-sanitizer memcheck (smoke)"
  timeout 120 compute-sanitizer --tool memcheck --print-limit 20 python3 scripts/sanitizer_smoke.py 2>&1 | tail -25 | tee -a "$LOG"
fi

if has bench; then
  step "benchmarks"
  timeout 420 python3 benchmarks/run_all.py --out "$OUT" ${BENCH_ONLY:+--only $BENCH_ONLY} 2>&1 | tee -a "$LOG" | grep -vE "^\s*$" | tail -150
fi
step "done"
