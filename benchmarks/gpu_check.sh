#!/usr/bin/env bash
# The GPU proof in one command (issue 15): correctness of every launch path on the device (stops on a
# mismatch), then the timings of kernel_bench.py and gpu_step_bench.py and the goals table; at most ~8
# minutes on an H100/H200 with torch + triton (no vLLM). Results go to $OUT when it is set (the GPU
# machine returns only what is written there), else they are appended to benchmarks/RESULTS.md.
#   bash benchmarks/gpu_check.sh               # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # tiny sizes on CPU under the Triton interpreter (< 1 min)
# PYTHON picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}  # Triton 3.9 warns when unset; 1 = its default
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
