"""End-to-end offline vLLM throughput with and without style steering (vLLM V1 runner, CPU here).

    python benchmarks/e2e_throughput.py [--models smollm2 tiny] [--batch-sizes 1 16 64] [--repeats 3] ...
    vllm-ngram-style bench ...            (the same benchmark, the same options)

Variants, all in the same run and interleaved round by round: (a) no logits processor, (b) the plugin
loaded but no request steered, the plugin with 50% / 100% of requests steered over 1 or 4 styles, and
(c) the naive per-request processor (vllm_ngram_style/naive_processor.py). This script is
`vllm-ngram-style bench` with this checkout's paths as defaults: it appends a section to
benchmarks/RESULTS.md, draws benchmarks/results/throughput_cpu.png and reads the corpora from
../shared/corpora. The machinery lives in vllm_ngram_style/bench/.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    from vllm_ngram_style.commands import bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_arguments(ap)
    ap.set_defaults(results=os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                    plot=os.path.join(ROOT, "benchmarks", "results", "throughput_cpu.png"),
                    corpora=os.environ.get("NGRAM_STYLE_CORPORA") or os.path.join(ROOT, "..", "shared", "corpora"))
    sys.exit(bench.run(ap.parse_args()))
