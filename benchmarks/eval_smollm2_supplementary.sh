#!/usr/bin/env bash
# Small follow-ups to benchmarks/eval_smollm2_full.sh (same model, prompts, 256 tokens; run it
# first, it trains the packs): best mode at stronger strengths on news headlines, with a 3-gram
# loop guard on Don Quixote (greedy), and with a loop penalty (greedy, then sampling).
# About 70 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/_eval_env.sh  # PACKS, CORPORA, the CPU backend environment
vllm-ngram-style eval --model smollm2 --pack "$PACKS/news_headlines_2017.stylepack" \
  --out benchmarks/results/eval_smollm2_full_news_strong --max-tokens 256 --lambdas 0 1.5 2 2.5 3 \
  --families best --prompt-lambdas --decodings greedy sample --sample-families unsteered best --js-prompts 0 --quiet
vllm-ngram-style eval --model smollm2 --pack "$PACKS/cervantes_don_quixote.stylepack" \
  --out benchmarks/results/eval_smollm2_full_guard3 --max-tokens 256 --lambdas 0 0.3 0.5 0.7 1.0 \
  --families best --prompt-lambdas --decodings greedy --js-prompts 0 --loop-guard 3 --quiet
# Best mode with an active loop penalty (style_loop_penalty 3 and 10), greedy, Don Quixote and Brown.
for rho in 3 10; do
  vllm-ngram-style eval --model smollm2 --pack "$PACKS/cervantes_don_quixote.stylepack" \
    --pack "$PACKS/brown_learned.stylepack" --out "benchmarks/results/eval_smollm2_full_penalty$rho" \
    --max-tokens 256 --lambdas 0 0.3 0.5 0.7 1.0 --families best --prompt-lambdas --decodings greedy \
    --js-prompts 0 --loop-penalty "$rho" --quiet
done
# Best mode with loop penalty 3 under sampling, all three corpora, λ up to 2.5.
vllm-ngram-style eval --model smollm2 --pack "$PACKS/cervantes_don_quixote.stylepack" \
  --pack "$PACKS/news_headlines_2017.stylepack" --pack "$PACKS/brown_learned.stylepack" \
  --out benchmarks/results/eval_smollm2_full_penalty3_sample --max-tokens 256 \
  --lambdas 0 0.3 0.5 0.7 1.0 1.5 2.0 2.5 --families best --prompt-lambdas --decodings sample \
  --js-prompts 0 --loop-penalty 3 --quiet
