#!/usr/bin/env bash
# The issue-5 evaluation at full size: SmolLM2-135M-Instruct, the three corpora, 20 prompts x 256
# tokens, greedy and top-p sampling, through vLLM with the plugin; plus real corpus passages as the
# frontier's far end. Writes benchmarks/results/eval_smollm2_full/. About 1.5-2 h on 2 CPU cores.
# Needs: `bash run.sh setup` (or the package with vLLM) and ../shared/corpora; packs missing from
# $PACKS are trained first (orders 3, top-512, the paper's weights: a few seconds each).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/_eval_env.sh  # PACKS, CORPORA, the CPU backend environment
OUT=${OUT:-benchmarks/results/eval_smollm2_full}
MODEL=$(vllm-ngram-style models get smollm2 | tail -1)
args=()
for c in cervantes_don_quixote news_headlines_2017 brown_learned; do
  [ -f "$PACKS/$c.stylepack" ] || vllm-ngram-style train --tokenizer "$MODEL" --corpus "$CORPORA/$c.txt" \
      --out "$PACKS/$c.stylepack" --quiet
  args+=(--pack "$PACKS/$c.stylepack" --corpus-text "$c=$CORPORA/$c.txt")
done
exec vllm-ngram-style eval --model smollm2 "${args[@]}" --out "$OUT" --max-tokens 256 \
  --lambdas 0 0.2 0.3 0.4 0.5 0.6 0.7 0.8 1.0 1.5 \
  --families paper exact exact+adaptive best \
  --family-lambdas paper=0.1,1.0 --family-lambdas exact=0.1,0.3,1.0 --family-lambdas exact+adaptive=0.5,1.0 \
  --prompt-lambdas --decodings greedy sample --sample-families unsteered prompt best \
  --js-prompts 2 --js-decodings greedy "$@"
