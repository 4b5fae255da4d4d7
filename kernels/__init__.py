"""Triton kernels of vllm-ngram-style and their launchers (installed as ``vllm_ngram_style.kernels``)."""
