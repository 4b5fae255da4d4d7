"""vllm-ngram-style bench: end-to-end offline vLLM throughput with and without style steering.

Runs every variant in the same process and interleaves them round by round: (a) no logits
processor, (b) the plugin loaded with no request steered, the plugin with 50%/100% of requests
steered over 1 or 4 styles, and (c) a naive per-request processor; reports ratios against (a).
The logic lives in vllm_ngram_style/benchmarking.py (shared with benchmarks/e2e_throughput.py).
Per-step host cost and host-device syncs: benchmarks/host_overhead.py; GPU: benchmarks/gpu_step_bench.py.
"""
from __future__ import annotations


def add_arguments(p) -> None:
    from ..benchmarking import add_e2e_arguments  # light: vLLM and torch are imported by run()

    add_e2e_arguments(p)


def run(args) -> int:
    from ..benchmarking import run_cli

    return run_cli(args)
