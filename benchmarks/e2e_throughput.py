"""End-to-end offline vLLM throughput with and without style steering (vLLM V1 runner, CPU here).

    python benchmarks/e2e_throughput.py [--models smollm2 tiny] [--batch-sizes 1 16 64] [--repeats 3] ...
    vllm-ngram-style bench ...            (the same benchmark, the same options)

Variants, all in the same run and interleaved round by round: (a) no logits processor, (b) the plugin
loaded but no request steered, the plugin with 50% / 100% of requests steered over 1 or 4 styles, and
(c) the naive per-request processor (vllm_ngram_style/naive_processor.py). Appends a section to
benchmarks/RESULTS.md and draws benchmarks/results/throughput_cpu.png. The logic lives in
vllm_ngram_style/benchmarking.py.
"""
from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from vllm_ngram_style.benchmarking import add_e2e_arguments, run_cli

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_e2e_arguments(ap)
    sys.exit(run_cli(ap.parse_args()))
