#!/usr/bin/env python
"""What a style blend costs the op: every row a blend of 4 styles against every row one style.

    python benchmarks/blend_bench.py [--batch 256] [--vocab 49152] [--repeats 7] [--quick]

Same workload as cpu_op_bench.py (real packs counted with SmolLM2's tokenizer from Don Quixote,
Austen, the Bible and Brown news; contexts cut from the styles' own texts), B rows, V wide logits,
one thread. "single": row r steered by style r mod 4 (the four styles resident); "blend 4": every row
steered by all four at once (strength 0.3 each, one op call: the [B, 4] column form). The blend is
first checked against the sum of the four single-style edits (allclose). Reports median thread CPU
ms per step of the compiled CPU op and of the torch reference op, and blend / single (the issue's
goal on CPU: <= 1.5x). Appends a section to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_op_bench import CORPORA, Evictor, Workload, timed  # noqa: E402  (bootstraps the package import)
from _common import RESULTS  # noqa: E402

from vllm_ngram_style.bench.report import machine_description  # noqa: E402
from vllm_ngram_style.kernels.cpu_kernel import CpuSteering  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402

K = 4
STRENGTH = 0.3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny synthetic styles: a smoke run of seconds")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpora", default=CORPORA)
    ap.add_argument("--results", default=None, help="append here ('' to skip; default benchmarks/RESULTS.md, "
                                                    "--quick: skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Workload(args.quick, args.model, args.corpora)
    styles = (work.variants * K)[:K] if len(work.variants) < K else work.variants[:K]
    if len(work.variants) < K:  # the quick workload has 2 styles: reuse them under new names
        import dataclasses

        styles = [dataclasses.replace(s, name=f"{s.name}{i}") for i, s in enumerate(styles)]
    b, v = (16, 4096) if args.quick else (args.batch, args.vocab)
    rng = np.random.default_rng(0)
    cpu, ref = CpuSteering(styles), ReferenceSteering(styles)
    ctx = torch.from_numpy(work.contexts(min(K, len(work.variants)), b, rng))  # [B, m]
    logits = torch.randn(b, v)  # [B, V]
    single_v = torch.arange(b, dtype=torch.int64) % K  # [B]
    single_s = torch.full((b,), STRENGTH)
    blend_v = torch.arange(K, dtype=torch.int64).repeat(b, 1)  # [B, K]
    blend_s = torch.full((b, K), STRENGTH)
    # correctness: the blend equals the sum of the four single-style edits
    want = logits.clone().double()
    for k in range(K):
        edit = ref.apply(torch.zeros(b, v, dtype=torch.float64), torch.full((b,), k), torch.full((b,), STRENGTH,
                                                                                                dtype=torch.float64), ctx)
        want += edit
    got = cpu.apply(logits.clone(), blend_v, blend_s, ctx)
    ok = torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)
    print(f"blend check against the sum of single-style edits: {'PASS' if ok else 'FAIL'}")
    if not ok:
        return 1
    entries = ref.entries(blend_v, blend_s, ctx)[0].numel() / b
    single_entries = ref.entries(single_v, single_s, ctx)[0].numel() / b
    z = logits.clone()
    fns = {
        "cpu single": lambda: cpu.apply(z, single_v, single_s, ctx),
        "cpu blend 4": lambda: cpu.apply(z, blend_v, blend_s, ctx),
        "reference single": lambda: ref.apply(z, single_v, single_s, ctx),
        "reference blend 4": lambda: ref.apply(z, blend_v, blend_s, ctx),
    }
    t = timed(fns, 2 if args.quick else args.repeats, Evictor())
    rows = [f"| {op} | {t[op + ' single']:.2f} | {t[op + ' blend 4']:.2f} | {t[op + ' blend 4'] / t[op + ' single']:.2f} |"
            for op in ("cpu", "reference")]
    load = os.getloadavg()
    section = (
        f"\n## Style blends: 4 styles per row vs 1 ({datetime.date.today()})\n\n"
        f"Machine: {machine_description()}, 1 torch thread; load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}. Command: `python benchmarks/blend_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`.\n\n"
        f"B={b}, V={v}, {work.label}. single: row r steered by style r mod 4 ({single_entries:.0f} entries per "
        f"row); blend 4: every row all four styles in one call ({entries:.0f} entries per row). Median thread "
        f"CPU ms per step, each sample one call on logits pushed out of cache first (cpu_op_bench.timed); the "
        f"blend checked against the sum of the single-style edits first.\n\n"
        "| op | single ms | blend 4 ms | blend / single |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(section)
    results = args.results if args.results is not None else ("" if args.quick else RESULTS)
    if results:
        with open(results, "a") as fh:
            fh.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
