"""The two vLLM logits-processor protocols, implemented over the shared SteeringCore.

v1.py: vLLM's V1 sampler (the CPU backend, or GPU with VLLM_USE_V2_MODEL_RUNNER=0); v2.py: Model
Runner V2 (the GPU default). Neither subclasses vLLM's interfaces: processor.py's
NgramStyleLogitsProcessor does, and builds the right one from its constructor's arguments. So v2.py
imports without vLLM (the GPU benchmarks drive it on machines that have only torch and triton).
"""
