# Sourced by the evaluation scripts (eval_smollm2_*.sh): where packs and corpora live, and the
# environment vLLM's CPU backend needs here (docs/configuration.md). Never overrides a caller's value.
PACKS=${PACKS:-$HOME/.cache/vllm-ngram-style/packs}
CORPORA=${CORPORA:-../shared/corpora}
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-4} VLLM_HOST_IP=127.0.0.1 \
       VLLM_NO_USAGE_STATS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
mkdir -p "$PACKS"
