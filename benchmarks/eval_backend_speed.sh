#!/usr/bin/env bash
# How much the compiled CPU kernel speeds up an evaluation (issue 11, item 6): the same small eval
# run (SmolLM2-135M through vLLM, Don Quixote pack, best mode at 3 strengths + unsteered, sampling,
# 8 prompts x 128 tokens), once with the torch reference op and once with the CPU kernel.
#   bash benchmarks/eval_backend_speed.sh [PACK]     (default: packs/quixote.stylepack from the demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${1:-packs/quixote.stylepack}
OUT=${OUT:-/tmp/eval-backend-speed}
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} VLLM_HOST_IP=127.0.0.1 VLLM_NO_USAGE_STATS=1
for backend in reference cpu reference cpu; do
  start=$(date +%s.%N)
  NGRAM_STYLE_BACKEND=$backend .venv/bin/vllm-ngram-style eval --model smollm2 --pack "quixote=$PACK" \
    --out "$OUT/$backend" --num-prompts 8 --max-tokens 128 --families best --lambdas 0 0.3 0.6 1.0 \
    --decodings sample --js-prompts 0 --enforce-eager --no-plots --quiet > "$OUT.$backend.log" 2>&1
  end=$(date +%s.%N)
  echo "backend=$backend wall_s=$(echo "$end - $start" | bc)"
done
