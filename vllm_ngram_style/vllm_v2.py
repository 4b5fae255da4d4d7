"""Alias kept for configurations written before the one class: name
``vllm_ngram_style:NgramStyleLogitsProcessor`` instead (it works under both model runners)."""
from .processor import NgramStyleLogitsProcessor as NgramStyleLogitsProcessorV2

__all__ = ["NgramStyleLogitsProcessorV2"]
