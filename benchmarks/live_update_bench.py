"""What a live style update costs the decoding steps that run while it is built and taken.

    python benchmarks/live_update_bench.py [--batch 64] [--steps 400] [--model smollm2]

The V1 adapter (the CPU path) is driven through vLLM's protocol at batch B with every request
steered (real Don Quixote pack, SmolLM2's vocabulary), each step followed by a stand-in for the
model's forward pass (the float32 matmul of SmolLM2-135M's lm_head at this batch on one thread, most of
its decode step), so the watcher thread competes with real work. Mid-run the live configuration
file gains a second style (Austen from ../shared/corpora, or a second copy of Don Quixote), which
the watcher loads, checks and compiles in the background; the adapter takes it at a step boundary.
Reports each phase's step times (median, max) and max/median over the update window: the goal is
that no step costs more than 2x the median. Appends a section to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    torch.set_num_threads(1)
    from vllm_ngram_style import NgramStyleLogitsProcessor
    from vllm_ngram_style.bench.report import machine_description
    from vllm_ngram_style.config import ENV_CONFIG, read_config
    from vllm_ngram_style.live import write_resolved
    from vllm_ngram_style.models import resolve_model
    from vllm_ngram_style.pack import save_pack
    from vllm_ngram_style.testing.vllm_stand_ins import fake_vllm_config
    from vllm_ngram_style.train import train_pack

    model = resolve_model(args.model)
    work = tempfile.mkdtemp(prefix="live-bench-")
    austen = os.path.join(ROOT, "..", "shared", "corpora", "austen_six_novels.txt")
    second = austen if os.path.exists(austen) else "don_quixote"
    paths = {}
    for name, corpus in (("quixote", "don_quixote"), ("second", second)):
        pack, _ = train_pack(model, [corpus], name=name, progress=False)
        paths[name] = os.path.join(work, f"{name}.stylepack")
        save_pack(pack, paths[name])
    user = os.path.join(work, "styles.json")
    with open(user, "w") as f:
        json.dump({"styles": {"quixote": paths["quixote"]}}, f)
    spec = {"config_file": user, "modes": ["exact"]}
    resolved = os.path.join(work, "resolved.json")
    write_resolved(resolved, read_config({"ngram_style": spec}, environ={}), spec)
    os.environ[ENV_CONFIG] = resolved
    os.environ.setdefault("NGRAM_STYLE_LIVE_POLL_S", "0.2")
    vcfg = fake_vllm_config(model, {})
    vcfg.additional_config = {}
    proc = NgramStyleLogitsProcessor(vcfg, torch.device("cpu"), False)
    vocab = 49152
    rng = np.random.default_rng(0)
    b = args.batch
    outs = [list(rng.integers(0, vocab, 8)) for _ in range(b)]
    added = [(i, SamplingParams(extra_args={"style": "quixote", "style_strength": 0.5}), [1, 2], outs[i])
             for i in range(b)]
    proc.update_state(BatchUpdate(b, [], added, []))
    hidden = torch.randn(b, 576)
    head = torch.randn(576, vocab)  # SmolLM2-135M's lm_head shape: most of its decode step at small B
    t0 = time.perf_counter()
    for _ in range(5):
        hidden @ head
    forward_ms = (time.perf_counter() - t0) / 5 * 1e3
    times, phase = [], []
    trigger = args.steps // 3
    state = "before"
    t_trigger = None
    for step in range(args.steps):
        if step == trigger:
            with open(user + ".tmp", "w") as f:
                json.dump({"styles": {"quixote": paths["quixote"], "second": paths["second"]}}, f)
            os.replace(user + ".tmp", user)
            state, t_trigger = "building", time.perf_counter()
        t = time.perf_counter()
        before = proc.live.updates
        proc.update_state(None)
        if proc.live.updates != before:
            state = "swap"
        logits = hidden @ head  # [B, V] the forward stand-in, fresh logits every step
        proc.apply(logits)
        for o in outs:
            o.append(int(rng.integers(0, vocab)))
        times.append(time.perf_counter() - t)
        phase.append(state)
        if state == "swap":
            state = "after"
            swap_s = time.perf_counter() - t_trigger
    proc.live.close()
    ms = np.array(times) * 1e3
    ph = np.array(phase)
    base = float(np.median(ms[ph == "before"]))
    window = ms[(ph == "building") | (ph == "swap")]
    rows = []
    for name in ("before", "building", "swap", "after"):
        sel = ms[ph == name]
        if sel.size:
            rows.append(f"| {name} | {sel.size} | {np.median(sel):.2f} | {sel.max():.2f} | {sel.max() / base:.2f} |")
    worst = float(window.max() / base) if window.size else float("nan")
    load = os.getloadavg()
    section = (
        f"\n## Live style update: cost to the decoding steps ({datetime.date.today()})\n\n"
        f"Machine: {machine_description()}, 1 torch thread; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(shared). Command: `python benchmarks/live_update_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`.\n\n"
        f"V1 adapter, B={b}, every request steered (Don Quixote, exact, SmolLM2 vocabulary), plus a forward stand-in "
        f"of {forward_ms:.1f} ms per step; at step {trigger} the live configuration file gains a second style "
        f"({os.path.basename(second)}), which the watcher loads, checks and compiles in its thread; taken "
        f"{swap_s:.2f} s after the edit. Step wall times in ms; ratio = max / median of the steps before the edit.\n\n"
        "| phase | steps | median ms | max ms | max / median before |\n|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\n**Worst step during the update: {worst:.2f}x the median** (goal <= 2x): "
        f"{'met' if worst <= 2 else 'not met'}.\n")
    print(section)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
