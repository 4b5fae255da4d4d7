"""vllm-ngram-style: batched n-gram style steering for vLLM.

Data flows one way: corpus -> counts -> style pack -> compiled modes -> tables -> kernels ->
steering core -> engine glue -> vLLM adapters -> server/CLI.

    --logits-processors vllm_ngram_style:NgramStyleLogitsProcessor

This module stays import-light: vLLM's API process imports it for ``validate_params``, so the
processor class is imported on first access only.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "NgramStyleLogitsProcessor":
        from .processor import NgramStyleLogitsProcessor

        return NgramStyleLogitsProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
