#!/usr/bin/env python
"""Steering-kernel benchmark: correctness on the device first, then timings with same-run baselines.

Runs on a bare GPU machine (torch + triton + numpy; no vLLM, corpora, tokenizer or install): the
package is imported from this checkout, and tables are synthetic with Don Quixote's shape statistics
(kernels/synthetic.py: 16.4k bigram contexts / 152k entries, 166k trigram contexts / 377k entries,
top-512, ~750-800 entries touched per row) unless --pack gives a real style pack.

Measured per batch B x vocabulary V x number of styles (one table set holds them all):
- memory floor: one in-place pass over the logits (logits.add_(row_vector)), GPU time;
- naive per-request loop: Python dict lookup + index_add_ per row and order (what per-request
  processors do), wall clock;
- torch reference op (ReferenceSteering.apply; it syncs), wall clock;
- the kernel through three launch paths: Triton's standard kernel[grid], the cached compiled-kernel
  launch ("fast", the default) and CUDA-graph replay; GPU time from CUDA events (launches queued
  behind a GPU sleep, so host cost is excluded) and wall clock over many back-to-back launches (host
  cost included: events cannot see it when the GPU idles); plus the fast path in history mode.
Launch floors (empty kernel with the same arguments; standard, fast, graph; one torch op) once.

  python benchmarks/kernel_bench.py                # GPU: prints markdown, appends to benchmarks/RESULTS.md
  python benchmarks/kernel_bench.py --cpu-smoke    # CPU, Triton interpreter, tiny sizes (tests run this)
"""
from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import argparse
import datetime
import time

import numpy as np
import torch

# this folder, for _common: `python benchmarks/X.py` puts it on sys.path, runpy.run_path (a test) does not
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, Timer, bootstrap, pick_device, table_shape  # noqa: E402

TIME_BUDGET_S = 240  # stop timing new configurations after this, so one run stays under 5 minutes

bootstrap()
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from vllm_ngram_style.kernels.launcher import TritonSteering  # noqa: E402
from vllm_ngram_style.kernels.synthetic import chain_weights, sample_contexts, synth_style  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# baselines

class NaiveLoop:
    """A per-request processor: per row and order, a Python dict lookup of the context, then index_add_."""

    def __init__(self, variants, device):
        self.maps = []  # [variant][order-1] -> (dict ctx tuple -> (start, end), tokens [E] dev, deltas [E] dev)
        for style in variants:
            per = []
            for o in style.orders:
                keys = [tuple(c) for c in o.context_tokens.tolist()]
                spans = dict(zip(keys, zip(o.offsets[:-1].tolist(), o.offsets[1:].tolist())))
                per.append((spans, torch.as_tensor(o.tokens, device=device),
                            torch.as_tensor(o.deltas, dtype=torch.float32, device=device)))
            self.maps.append(per)

    def apply(self, logits, variant_list, strength_list, ctx_list):
        for r, (v, s, ctx) in enumerate(zip(variant_list, strength_list, ctx_list)):
            if v < 0 or s == 0:
                continue
            row = logits[r]
            for n, (spans, toks, deltas) in enumerate(self.maps[v], 1):
                span = spans.get(tuple(ctx[len(ctx) - (n - 1):]) if n > 1 else ())
                if span is not None:
                    row.index_add_(0, toks[span[0]:span[1]], deltas[span[0]:span[1]], alpha=s)
        return logits


@triton.jit
def _empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, FLAG: tl.constexpr):
    pass


# ---------------------------------------------------------------------------------------------------
# timing

def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:,.1f}x"


# ---------------------------------------------------------------------------------------------------
# workload

_WEIGHTS: dict = {}


def contexts_for(style, rng, rows):
    """sample_contexts with the style's chain weights computed once."""
    if id(style) not in _WEIGHTS:
        _WEIGHTS[id(style)] = (style, chain_weights(style) if style.max_order > 1 else None)
    return sample_contexts(style, rng, rows, weights=_WEIGHTS[id(style)][1])


def make_batch(variants, b, v, device, rng, n_styles):
    """Rows of every style; contexts as generated text meets them; all rows steered at strength 0.5."""
    m = max(s.max_order for s in variants) - 1
    variant = np.arange(b) % n_styles
    ctx = np.full((b, m), -1, dtype=np.int64)
    for i in range(n_styles):
        rows = np.flatnonzero(variant == i)
        if rows.size:
            c = contexts_for(variants[i], rng, rows.size)
            ctx[rows, m - c.shape[1]:] = c
    strength = np.full(b, 0.5, dtype=np.float32)
    return dict(
        logits=torch.randn(b, v, device=device),
        variant=torch.as_tensor(variant, dtype=torch.int64, device=device),
        strength=torch.as_tensor(strength, device=device),
        context=torch.as_tensor(ctx, device=device),
        lists=(variant.tolist(), strength.tolist(), [[t for t in row if t >= 0] for row in ctx.tolist()]))


def history_of(batch, hist_len, device):
    """The same rows in vLLM MRV2 form: slot r holds row r's known tokens at positions 0..k-1 (k may be 0),
    row_last_pos = k - 1, so a short context is a short history (positions < 0 missing)."""
    ctx = batch["context"].cpu().numpy()
    b, m = ctx.shape
    hist = np.random.default_rng(1).integers(0, 100, size=(b, hist_len)).astype(np.int32)
    pos = np.full(b, -1, dtype=np.int64)
    for r in range(b):
        known = ctx[r][ctx[r] >= 0]
        hist[r, :known.size] = known
        pos[r] = known.size - 1
    return dict(row_slot=torch.arange(b, device=device), row_last_pos=torch.as_tensor(pos, device=device),
                all_token_ids=torch.as_tensor(hist, device=device),
                slot_variant=batch["variant"].to(torch.int32), slot_strength=batch["strength"])


# ---------------------------------------------------------------------------------------------------
# correctness

def check_correctness(variants, device, rng, v, rows=64) -> tuple[list[str], list[str]]:
    """Every launch path and both context sources against the reference op on this device.
    Returns (problems, what was checked)."""
    problems, checked = [], []
    ref = ReferenceSteering(variants, device)
    ts = TritonSteering(variants, device)
    m = ts.max_order - 1
    variant_np = rng.integers(-1, len(variants), size=rows)
    variant = torch.as_tensor(variant_np, device=device)
    ctx = np.full((rows, m), -1, dtype=np.int64)
    drawn = [contexts_for(s, rng, rows) for s in variants]  # [variant][row] -> context of that style
    for i in range(rows):
        c = drawn[max(int(variant_np[i]), 0)][i]
        keep = int(rng.integers(0, m + 1)) if rng.random() < 0.2 else m  # some short histories
        if keep:
            ctx[i, m - keep:] = c[len(c) - keep:]
    ctx = torch.as_tensor(ctx, device=device)
    strength = torch.as_tensor(rng.uniform(0.1, 1.0, rows).astype(np.float32), device=device)
    strength[::7] = 0.0
    scale = torch.as_tensor(rng.uniform(0.0, 1.0, rows).astype(np.float32), device=device)
    base = torch.randn(rows, v, device=device)
    eff = strength * scale
    expect = ref.apply(base.clone(), variant, eff, ctx)
    r_, t_, _ = ref.entries(variant, eff, ctx)
    keep = t_ < v
    touched = torch.zeros(rows, v, dtype=torch.bool, device=device)
    touched[r_[keep], t_[keep]] = True

    def compare(name, got):
        if not torch.allclose(got, expect, atol=2e-5, rtol=1e-5):
            problems.append(f"{name}: max |kernel - reference| = {float((got - expect).abs().max()):.3g}")
        if not torch.equal(got.view(torch.int32)[~touched], base.view(torch.int32)[~touched]):
            problems.append(f"{name}: a position the reference leaves alone was written")

    paths = ["standard", "fast"] if device.type == "cuda" else ["standard"]
    for path in paths:
        ts.launch_path = path
        for call in range(2):  # the fast path's first call goes through the standard launcher
            compare(f"{path} call {call}", ts.apply(base.clone(), variant, strength, ctx, row_scale=scale))
        checked.append(f"{path} launch")
    if device.type == "cuda":
        ts.launch_path, ts.graphs = "fast", True
        out = base.clone()
        for call in range(4):  # eager, capture + replay, replay, replay
            out.copy_(base)
            compare(f"graph call {call}", ts.apply(out, variant, strength, ctx, row_scale=scale))
        if len(ts._graphs) != 1:
            problems.append(f"graph path: expected one captured graph, found {len(ts._graphs)}")
        ts.graphs = False
        checked.append("CUDA-graph replay")
    # History source: the same rows laid out as MRV2 token history must give bit-identical logits.
    batch = dict(context=ctx, variant=variant, strength=strength)
    h = history_of(batch, 32, device)
    via_ctx = ts.apply(base.clone(), variant, strength, ctx, row_scale=scale)
    for dtype in (torch.int32, torch.int64):
        via_hist = ts.apply_from_history(base.clone(), h["row_slot"], h["row_last_pos"], h["all_token_ids"].to(dtype),
                                         h["slot_variant"], h["slot_strength"], row_scale=scale)
        if not torch.equal(via_hist.view(torch.int32), via_ctx.view(torch.int32)):
            problems.append(f"history source ({dtype}) differs from context source")
    checked.append("history source (int32/int64) bit-identical to context source")
    if int(touched.sum()) == 0:
        problems.append("nothing was steered: the check is vacuous")
    checked.append(f"{rows} rows x {v} vocab, {len(variants)} variant(s), {int(touched.sum())} steered logits")
    return problems, checked


# ---------------------------------------------------------------------------------------------------

def launch_floors(device, timer) -> dict:
    """Host cost of launching an EMPTY kernel with the steering kernel's argument list."""
    x = torch.zeros(16, device=device)
    args = (x, 1, 2, x, x, x, x, x, 3, 4, x, 5, 6, x)
    out = {"standard": timer.wall_us(lambda: _empty[(64,)](*args, FLAG=True))}
    if device.type == "cuda":
        compiled = _empty[(64,)](*args, FLAG=True)
        ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        get_stream = triton.runtime.driver.active.get_current_stream
        dev = torch.cuda.current_device()

        def fast():
            compiled.run(64, 1, 1, get_stream(dev), compiled.function, compiled.packed_metadata, None, None, None,
                         *ptrs, True)

        out["fast"] = timer.wall_us(fast)
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            g.capture_begin()
            fast()
            g.capture_end()
        out["graph replay"] = timer.wall_us(g.replay)
    out["torch op x.add_(1)"] = timer.wall_us(lambda: x.add_(1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under the Triton interpreter")
    ap.add_argument("--pack", help="a .stylepack file to use instead of synthetic tables (exact + paper modes)")
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--vocabs", default="32000,128256,151936")
    ap.add_argument("--styles", default="1,4")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    device = pick_device(smoke)
    if device is None:
        return 2
    batches = [2] if smoke else [int(x) for x in args.batches.split(",")]
    vocabs = [67] if smoke else [int(x) for x in args.vocabs.split(",")]
    style_counts = [1, 2] if smoke else [int(x) for x in args.styles.split(",")]
    shape = table_shape(smoke)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter; not performance)"
    env = f"torch {torch.__version__}, triton {triton.__version__}, numpy {np.__version__}"
    date = datetime.date.today().isoformat()
    print(f"# steering kernel benchmark: {card}; {env}; {date}")
    rng = np.random.default_rng(0)
    timer = Timer(device, smoke)

    pack_variants = None
    if args.pack:
        from vllm_ngram_style.modes import compile_style
        from vllm_ngram_style.pack import load_pack

        pack = load_pack(args.pack)
        pack_variants = [compile_style(pack, m) for m in ("exact", "paper")]

    synthesised = {}

    def styles_for(v):
        if pack_variants is not None:
            return [pack_variants[i % 2] for i in range(max(style_counts))]
        if v not in synthesised:
            synthesised.clear()  # one vocabulary at a time: the timing loop goes V by V
            synthesised[v] = [synth_style(i, v, shape["contexts"], shape["entries"], shape["top_k"])
                              for i in range(max(style_counts))]
        return synthesised[v]

    # 1. correctness on this device, before any timing
    t0 = time.perf_counter()
    problems, checked = check_correctness(styles_for(vocabs[0])[:max(style_counts)], device, rng, vocabs[0],
                                          rows=6 if smoke else 64)
    if problems:
        print("correctness: FAIL\n  " + "\n  ".join(problems))
        return 1
    verdict = f"PASS vs the torch reference op: {'; '.join(checked)}"
    print(f"correctness: {verdict} ({time.perf_counter() - t0:.1f} s)")

    # 2. launch floors
    floors = launch_floors(device, timer)
    lines = ["Launch floors (wall clock per call): " + ", ".join(f"{k} {fmt(u)} us" for k, u in floors.items())]

    # 3. timings
    header = ("| B | V | styles | entries/row | memory floor GPU us | naive loop us | torch ref us | kernel GPU us | "
              "standard wall us | fast wall us | graph wall us | history fast wall us | naive / fast | "
              "kernel GPU / floor |")
    rows_md = [header, "|" + "---|" * (header.count("|") - 1)]
    sizes = []
    skipped = 0
    for v in vocabs:
        variants_all = styles_for(v)
        for n_styles in style_counts:
            variants = variants_all[:n_styles]
            if pack_variants is not None and any(int(o.tokens.max(initial=0)) >= v for s in variants for o in s.orders):
                print(f"skipping V={v}: the pack's token ids exceed it (the naive baseline cannot skip them)")
                continue
            ts = TritonSteering(variants, device)
            sizes.append(f"V={v}, {n_styles} style(s): {ts.tables.summary()}")
            ref = ReferenceSteering(variants, device)
            naive = NaiveLoop(variants, device)
            for b in batches:
                if time.perf_counter() - t_start > TIME_BUDGET_S:
                    skipped += 1
                    continue
                batch = make_batch(variants, b, v, device, rng, n_styles)
                lg, var, st, ctx = batch["logits"], batch["variant"], batch["strength"], batch["context"]
                per_row = ref.entries(var, st, ctx)[0].numel() / b
                rowvec = torch.randn(v, device=device)
                mem_wall = timer.wall_us(lambda: lg.add_(rowvec))
                mem_gpu = timer.gpu_us(lambda: lg.add_(rowvec), mem_wall)
                slow = dict(n=3, reps=1) if b >= 256 else dict(n=10, reps=3)
                naive_us = timer.wall_us(lambda: naive.apply(lg, *batch["lists"]), **slow)
                ref_us = timer.wall_us(lambda: ref.apply(lg, var, st, ctx), **slow)
                walls = {}
                ts.graphs = False
                for path in ("standard", "fast") if device.type == "cuda" else ("standard",):
                    ts.launch_path = path
                    walls[path] = timer.wall_us(lambda: ts.apply(lg, var, st, ctx))
                ts.launch_path = "fast" if device.type == "cuda" else "standard"
                kernel_gpu = timer.gpu_us(lambda: ts.apply(lg, var, st, ctx), walls["standard"])
                graph_wall = None
                if device.type == "cuda":
                    ts.graphs = True
                    graph_wall = timer.wall_us(lambda: ts.apply(lg, var, st, ctx))
                    ts.graphs = False
                h = history_of(batch, 64, device)
                hist_wall = timer.wall_us(lambda: ts.apply_from_history(lg, h["row_slot"], h["row_last_pos"],
                                                                        h["all_token_ids"], h["slot_variant"],
                                                                        h["slot_strength"]))
                fast_wall = walls["fast"] if device.type == "cuda" else walls["standard"]
                rows_md.append(
                    f"| {b} | {v} | {n_styles} | {per_row:.0f} | {fmt(mem_gpu)} | {fmt(naive_us)} | {fmt(ref_us)} | "
                    f"{fmt(kernel_gpu)} | {fmt(walls['standard'])} | {fmt(walls.get('fast'))} | "
                    f"{fmt(graph_wall)} | {fmt(hist_wall)} | {ratio(naive_us, fast_wall)} | {ratio(kernel_gpu, mem_gpu)} |")
                print(rows_md[-1], flush=True)
    # 4. tuning: entries per vector step (BLOCK) and warps per program, fast path, GPU time
    sweep = []
    if device.type == "cuda" and time.perf_counter() - t_start < TIME_BUDGET_S:
        v = 128256 if 128256 in vocabs else vocabs[-1]
        variants = styles_for(v)[:1]
        for b in (256, 1024):
            batch = make_batch(variants, b, v, device, rng, 1)
            lg, var, st, ctx = batch["logits"], batch["variant"], batch["strength"], batch["context"]
            cells = []
            for block, warps in ((128, 4), (256, 4), (512, 4), (256, 8), (1024, 8)):
                if time.perf_counter() - t_start > TIME_BUDGET_S + 30:
                    break
                tsb = TritonSteering(variants, device, block=block, num_warps=warps)
                wall = timer.wall_us(lambda: tsb.apply(lg, var, st, ctx))
                cells.append(f"BLOCK {block} / {warps} warps: {fmt(timer.gpu_us(lambda: tsb.apply(lg, var, st, ctx), wall))}")
            sweep.append(f"B={b}, V={v}, 1 style, kernel GPU us: " + "; ".join(cells))
    lines += sweep
    if skipped:
        lines.append(f"({skipped} configurations skipped: the run reached its {TIME_BUDGET_S} s budget)")
    notes = [
        "Columns: GPU us = CUDA-event time per call with the launches queued behind a GPU sleep (host cost "
        "excluded); wall us = wall clock per call over back-to-back calls (host cost included). "
        "kernel GPU us is the fast launch path. naive loop = Python dict lookup + index_add_ per row and order; "
        "torch ref = ReferenceSteering.apply (syncs). entries/row = entries the batch's rows actually add. "
        "All rows steered, variant = row % styles; tables: " +
        ("the pack given with --pack" if args.pack else "synthetic, Don Quixote shape (kernels/synthetic.py)") + ".",
    ]
    report = [f"## Steering kernel: {card}, {date}", "", f"{env}; `python benchmarks/kernel_bench.py"
              f"{' --cpu-smoke' if smoke else ''}`; total {time.perf_counter() - t_start:.0f} s.", "",
              f"Correctness on this device: {verdict}.", "", *lines, "", "Table sizes: " + "; ".join(sizes), "", *rows_md, "", *notes, ""]
    print("\n".join(report))
    if device.type == "cuda" and not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(report))
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
