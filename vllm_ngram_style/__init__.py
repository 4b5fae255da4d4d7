"""vllm-ngram-style: batched n-gram style steering for vLLM.

Data flows one way: corpus -> counts -> style pack -> GPU tables -> kernel -> logits processor -> server.
This module stays import-light: vLLM's API process imports the package for ``validate_params``.
"""
__version__ = "0.1.0"
