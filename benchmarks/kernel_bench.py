#!/usr/bin/env python
"""Steering-kernel benchmark: correctness on the device first (_checks.py), then timings with same-run baselines.

Runs on a bare GPU machine (torch + triton + numpy; no vLLM, corpora, tokenizer or install): the
package is imported from this checkout, and tables are synthetic with Don Quixote's shape statistics
(kernels/synthetic.py: 16.4k bigram contexts / 152k entries, 166k trigram contexts / 377k entries,
top-512, ~750-800 entries touched per row) unless --pack gives a real style pack.

Measured per batch B x vocabulary V x number of styles (one table set holds them all; rows mixed):
- floors: one in-place pass over the logits (logits.add_(row_vector), GPU time), and the bytes the
  kernel must touch (entries x (8 B entry + 2 x 32 B logits sector, read and written)) over the copy
  bandwidth measured in this run; launch floors (an empty kernel with the same 15 arguments:
  standard, fast, graph replay; one torch op);
- baselines: naive per-request loop (Python dict lookup + index_add_ per row and order) and the
  torch reference op (ReferenceSteering.apply; it syncs), wall clock;
- the kernel (context source) through the standard launch, the fast launch and CUDA-graph replay:
  GPU time from CUDA events (launches queued behind a GPU sleep: host cost excluded) and wall clock
  over back-to-back launches (host cost included);
- the history source with the token history in device memory and in UVA pinned host memory (as
  vLLM's Model Runner V2 keeps it by default), fast path, GPU and wall;
- with 4 styles: a 4-column blend (every row blends all 4) against one style per row;
- the entropy kernel (adaptive strength) against the torch formula and the one-read floor.
Then BLOCK / num_warps sweeps of both kernels at B=256 and 1024.

  python benchmarks/kernel_bench.py                # GPU: results to $OUT/kernel_bench.md, or appended to RESULTS.md
  python benchmarks/kernel_bench.py --cpu-smoke    # CPU, Triton interpreter, tiny sizes (tests run this)
"""
from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# this folder, for _common: `python benchmarks/X.py` puts it on sys.path, runpy.run_path (a test) does not
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Timer, bootstrap, copy_bandwidth, describe_run, fmt, out_dir, pick_device, ratio,  # noqa: E402
                     table_shape, write_results)

bootstrap()
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from _checks import check_op, fast_path_status, history_from_context  # noqa: E402
from vllm_ngram_style.adaptive import adaptive_scale  # noqa: E402
from vllm_ngram_style.kernels.launcher import TritonSteering  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402
from vllm_ngram_style.kernels.synthetic import chain_weights, sample_contexts, synth_style  # noqa: E402

SECTOR_BYTES = 32  # a random logits access reads and writes a whole 32-byte sector


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
def _empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, FLAG: tl.constexpr):
    pass


_WEIGHTS: dict = {}


def contexts_for(style, rng, rows):
    """sample_contexts with the style's chain weights computed once."""
    if id(style) not in _WEIGHTS:
        _WEIGHTS[id(style)] = (style, chain_weights(style) if style.max_order > 1 else None)
    return sample_contexts(style, rng, rows, weights=_WEIGHTS[id(style)][1])


def make_batch(variants, b, v, device, rng, n_styles):
    """Rows of every style (variant = row % styles); contexts as generated text meets them; strength 0.5."""
    m = max(s.max_order for s in variants) - 1
    variant = np.arange(b) % n_styles
    ctx = np.full((b, m), -1, dtype=np.int64)
    for i in range(n_styles):
        rows = np.flatnonzero(variant == i)
        if rows.size:
            c = contexts_for(variants[i], rng, rows.size)
            ctx[rows, m - c.shape[1]:] = c
    strength = np.full(b, 0.5, dtype=np.float32)
    return dict(logits=torch.randn(b, v, device=device), variant=torch.as_tensor(variant, device=device),
                strength=torch.as_tensor(strength, device=device), context=torch.as_tensor(ctx, device=device),
                lists=(variant.tolist(), strength.tolist(), [[t for t in row if t >= 0] for row in ctx.tolist()]))


def launch_floors(device, timer) -> dict:
    """Host cost of launching an EMPTY kernel with the steering kernel's argument count (context form)."""
    x = torch.zeros(16, device=device)
    args = (x, 1, 2, x, x, 3, 4, x, 5, 6, x, 7, 8, x, 9)
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
        with torch.cuda.stream(torch.cuda.Stream()):
            g.capture_begin()
            fast()
            g.capture_end()
        out["graph replay"] = timer.wall_us(g.replay)
    out["torch op x.add_(1)"] = timer.wall_us(lambda: x.add_(1))
    return out


def time_config(ts, ref, naive, batch, variants, n_styles, device, timer, bandwidth, rng, smoke, uva=True) -> dict:
    """Every timing of one (B, V, styles) configuration."""
    lg, var, st, ctx = batch["logits"], batch["variant"], batch["strength"], batch["context"]
    b, v = lg.shape
    cuda = device.type == "cuda"
    entries = ref.entries(var, st, ctx)[0].numel()
    row = dict(B=b, V=v, styles=n_styles, entries_per_row=entries / b,
               touched_floor_us=None if bandwidth is None else entries * (8 + 2 * SECTOR_BYTES) / bandwidth * 1e6)
    rowvec = torch.randn(v, device=device)
    row["dense_pass_gpu_us"] = timer.gpu_us(lambda: lg.add_(rowvec), timer.wall_us(lambda: lg.add_(rowvec)))
    slow = dict(n=1, reps=1) if smoke else (dict(n=3, reps=1) if b >= 256 else dict(n=10, reps=3))
    row["naive_us"] = timer.wall_us(lambda: naive.apply(lg, *batch["lists"]), **slow)
    row["ref_us"] = timer.wall_us(lambda: ref.apply(lg, var, st, ctx), **slow)
    apply = lambda: ts.apply(lg, var, st, ctx)  # noqa: E731
    for path in ("standard", "fast") if cuda else ("standard",):
        ts.launch_path = path
        row[f"{path}_wall_us"] = timer.wall_us(apply)
    ts.launch_path = "fast"
    row["kernel_gpu_us"] = timer.gpu_us(apply, row["standard_wall_us"])
    if cuda:
        ts.graphs = True
        row["graph_wall_us"] = timer.wall_us(apply)
        ts.graphs = False
    for where in ("device", "uva") if cuda and uva else ("device",):
        hist, row_slot, row_pos, _ = history_from_context(ctx, 64, torch.int32, device, where)
        happly = lambda: ts.apply_from_history(lg, row_slot, row_pos, hist, var, st)  # noqa: E731
        row[f"hist_{where}_wall_us"] = timer.wall_us(happly)
        row[f"hist_{where}_gpu_us"] = timer.gpu_us(happly, row[f"hist_{where}_wall_us"])
        del hist
    if n_styles >= 4:  # every row blends 4 styles (their contexts: the row's own style's)
        k = 4
        var4 = (var[:, None] + torch.arange(k, device=device)[None, :]) % n_styles  # [B, 4]
        st4 = st[:, None].expand(b, k).contiguous() / k
        blend = lambda: ts.apply(lg, var4, st4, ctx)  # noqa: E731
        row["blend4_gpu_us"] = timer.gpu_us(blend, timer.wall_us(blend))
        row["blend4_entries_per_row"] = ref.entries(var4, st4, ctx)[0].numel() / b
    # entropy (adaptive strength): one read of the logits; the torch formula for contrast
    ent = lambda: ts.normalised_entropy(lg)  # noqa: E731
    row["entropy_wall_us"] = timer.wall_us(ent)
    row["entropy_gpu_us"] = timer.gpu_us(ent, row["entropy_wall_us"])
    row["entropy_read_floor_us"] = None if bandwidth is None else b * v * lg.element_size() / (bandwidth / 2) * 1e6
    row["torch_entropy_gpu_us"] = timer.gpu_us(lambda: adaptive_scale(lg), timer.wall_us(lambda: adaptive_scale(lg)))
    return row


def sweeps(variants, device, timer, rng, vocab) -> list[str]:
    """Entries per vector step (BLOCK) / warps of the steering kernel; BLOCK_V / warps of the entropy kernel."""
    lines = []
    steer = {(block, warps): TritonSteering(variants[:1], device, block=block, num_warps=warps)
             for block, warps in ((128, 4), (256, 4), (512, 4), (256, 8), (1024, 8))}
    ent = {(bv, warps): TritonSteering(variants[:1], device, entropy_block=bv, entropy_warps=warps)
           for bv, warps in ((2048, 4), (4096, 8), (8192, 8), (8192, 16))}
    for b in (256, 1024):
        batch = make_batch(variants[:1], b, vocab, device, rng, 1)
        lg, var, st, ctx = batch["logits"], batch["variant"], batch["strength"], batch["context"]
        cells = []
        for (block, warps), tsb in steer.items():
            wall = timer.wall_us(lambda: tsb.apply(lg, var, st, ctx))
            cells.append(f"BLOCK {block}/{warps} warps {fmt(timer.gpu_us(lambda: tsb.apply(lg, var, st, ctx), wall))}")
        ecells = []
        for (block_v, warps), tse in ent.items():
            wall = timer.wall_us(lambda: tse.normalised_entropy(lg))
            ecells.append(f"BLOCK_V {block_v}/{warps} warps {fmt(timer.gpu_us(lambda: tse.normalised_entropy(lg), wall))}")
        lines.append(f"B={b}, V={vocab}, 1 style, GPU us: steering kernel " + "; ".join(cells) +
                     ". Entropy kernel " + "; ".join(ecells))
    return lines


def render(rows, run, verdict, fast_lines, floors, bandwidth, sizes, lines, elapsed, tables_from) -> str:
    head = ["## Steering kernel: " + f"{run['card']}, {run['date']}", "",
            f"{run['env']}; `{run['command']}`; {elapsed:.0f} s. Tables: {tables_from}.", "",
            f"Correctness on this device: {verdict}.", "", "Fast launch path: " + "; ".join(fast_lines) + ".", "",
            "Device-to-device copy bandwidth (read + write): " + ("-" if bandwidth is None else f"{bandwidth / 1e12:.2f} TB/s")
            + ". Launch floors (wall per call, empty kernel with 15 arguments): "
            + ", ".join(f"{k} {fmt(u)} us" for k, u in floors.items()) + ".", ""]
    t1 = ["| B | V | styles | entries/row | dense pass GPU us | touched-bytes floor us | naive loop us | torch ref us | "
          "kernel GPU us | standard wall us | fast wall us | graph wall us | naive / fast | ref / fast | "
          "kernel GPU / touched floor | fast wall / fast launch floor |", "|" + "---|" * 16]
    t2 = ["| B | V | styles | history device: GPU / fast wall us | history UVA: GPU / fast wall us | UVA / device GPU | "
          "4-style blend GPU us (entries/row) | blend / single GPU | entropy GPU / wall us | entropy read floor us | "
          "torch softmax entropy GPU us |", "|" + "---|" * 11]
    for r in rows:
        t1.append(f"| {r['B']} | {r['V']} | {r['styles']} | {r['entries_per_row']:.0f} | {fmt(r['dense_pass_gpu_us'])} | "
                  f"{fmt(r['touched_floor_us'])} | {fmt(r['naive_us'])} | {fmt(r['ref_us'])} | {fmt(r['kernel_gpu_us'])} | "
                  f"{fmt(r['standard_wall_us'])} | {fmt(r.get('fast_wall_us'))} | {fmt(r.get('graph_wall_us'))} | "
                  f"{ratio(r['naive_us'], r.get('fast_wall_us'))} | {ratio(r['ref_us'], r.get('fast_wall_us'))} | "
                  f"{ratio(r['kernel_gpu_us'], r['touched_floor_us'])} | {ratio(r.get('fast_wall_us'), floors.get('fast'))} |")
        blend = "-" if "blend4_gpu_us" not in r else f"{fmt(r['blend4_gpu_us'])} ({r['blend4_entries_per_row']:.0f})"
        t2.append(f"| {r['B']} | {r['V']} | {r['styles']} | {fmt(r['hist_device_gpu_us'])} / {fmt(r['hist_device_wall_us'])} | "
                  f"{fmt(r.get('hist_uva_gpu_us'))} / {fmt(r.get('hist_uva_wall_us'))} | "
                  f"{ratio(r.get('hist_uva_gpu_us'), r['hist_device_gpu_us'])} | {blend} | "
                  f"{ratio(r.get('blend4_gpu_us'), r['kernel_gpu_us'])} | {fmt(r['entropy_gpu_us'])} / "
                  f"{fmt(r['entropy_wall_us'])} | {fmt(r['entropy_read_floor_us'])} | {fmt(r['torch_entropy_gpu_us'])} |")
    notes = ["GPU us = CUDA-event time per call, the launches queued behind a GPU sleep (host cost excluded); wall us = "
             "wall clock per call over back-to-back calls (host cost included). kernel GPU us: context source, fast path. "
             "Touched-bytes floor: entries x (8 B entry + 2 x 32 B logits sector) / copy bandwidth; entropy read floor: "
             "B x V x 4 B / (copy bandwidth / 2). 4-style blend: every row blends all 4 styles at strength/4 (4x the "
             "lookups and entries of one style per row)."]
    return "\n".join(head + ["Table sizes: " + "; ".join(sizes), ""] + t1 + [""] + t2 + [""] + lines + [""] + notes) + "\n"


def main(argv=None) -> int:
    return run(argv)["rc"]


def run(argv=None) -> dict:
    """The whole benchmark; returns rc, markdown and the measured rows (gpu_check.py reads them)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under the Triton interpreter")
    ap.add_argument("--pack", help="a .stylepack file to use instead of synthetic tables (exact + paper modes)")
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--vocabs", default="128256,32000,151936")
    ap.add_argument("--styles", default="1,4")
    ap.add_argument("--budget", type=float, default=240, help="seconds after which no new configuration starts")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-uva", action="store_true", help="time the token history in device memory only")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    device = pick_device(smoke)
    if device is None:
        return dict(rc=2, md="", rows=[])
    batches = [2] if smoke else [int(x) for x in args.batches.split(",")]
    vocabs = [67] if smoke else [int(x) for x in args.vocabs.split(",")]
    style_counts = [1, 4] if smoke else [int(x) for x in args.styles.split(",")]
    shape = table_shape(smoke)
    run = describe_run(device, argv, __file__)
    print(f"# steering kernel benchmark: {run['card']}; {run['env']}; {run['date']}", flush=True)
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
    problems, checked, fast_lines = check_op(styles_for(vocabs[0]), device, rng, vocabs[0], rows=6 if smoke else 64,
                                             uva=not args.no_uva)
    if problems:
        print("correctness: FAIL\n  " + "\n  ".join(problems), flush=True)
        return dict(rc=1, md="Kernel correctness: FAIL\n\n" + "\n".join(f"- {p}" for p in problems) + "\n", rows=[],
                    problems=problems)
    verdict = f"PASS vs the torch reference op: {'; '.join(checked)}"
    print(f"correctness: {verdict} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print("fast path: " + "; ".join(fast_lines), flush=True)
    # 2. floors
    bandwidth = copy_bandwidth(device)
    floors = launch_floors(device, timer)
    # 3. timings
    rows, sizes, lines, skipped = [], [], [], 0
    for v in vocabs:
        for n_styles in style_counts:
            variants = styles_for(v)[:n_styles]
            if pack_variants is not None and any(int(o.tokens.max(initial=0)) >= v for s in variants for o in s.orders):
                print(f"skipping V={v}: the pack's token ids exceed it (the naive baseline cannot skip them)")
                continue
            ts = TritonSteering(variants, device)
            sizes.append(f"V={v}, {n_styles} style(s): {ts.tables.summary()}")
            ref, naive = ReferenceSteering(variants, device), NaiveLoop(variants, device)
            for b in batches:
                if time.perf_counter() - t_start > args.budget:
                    skipped += 1
                    continue
                batch = make_batch(variants, b, v, device, rng, n_styles)
                try:  # correctness passed above: a timing that raises is reported, the others still run
                    rows.append(time_config(ts, ref, naive, batch, variants, n_styles, device, timer, bandwidth, rng,
                                            smoke, uva=not args.no_uva))
                except Exception as exc:  # noqa: BLE001
                    lines.append(f"B={b}, V={v}, {n_styles} style(s): timing raised {type(exc).__name__}: {exc}")
                    print(traceback.format_exc(), flush=True)
                    continue
                print(json.dumps({k: (round(x, 2) if isinstance(x, float) else x) for k, x in rows[-1].items()}), flush=True)
                del batch
            fast_lines = fast_path_status(ts)
    if device.type == "cuda" and not args.no_sweep and time.perf_counter() - t_start < args.budget:
        try:
            lines += sweeps(styles_for(vocabs[0]), device, timer, rng, vocabs[0])
        except Exception as exc:  # noqa: BLE001
            lines.append(f"sweep raised {type(exc).__name__}: {exc}")
            print(traceback.format_exc(), flush=True)
    if skipped:
        lines.append(f"({skipped} configurations skipped: the run reached its {args.budget:.0f} s budget)")
    lines.append("Fast path after the timings: " + "; ".join(fast_lines))
    md = render(rows, run, verdict, fast_lines, floors, bandwidth, sizes, lines, time.perf_counter() - t_start,
                "the pack given with --pack" if args.pack else "synthetic, Don Quixote shape (kernels/synthetic.py)")
    print(md, flush=True)
    where = write_results(md, "kernel_bench", device, not args.no_append)
    if out_dir():
        with open(os.path.join(out_dir(), "kernel_bench.json"), "w") as fh:
            json.dump(dict(run=run, rows=rows, floors=floors, bandwidth=bandwidth, fast_path=fast_lines), fh, indent=1)
    if where:
        print(f"written to {where}")
    return dict(rc=0, md=md, rows=rows, floors=floors, bandwidth=bandwidth, fast_path=fast_lines, verdict=verdict)


if __name__ == "__main__":
    sys.exit(main())
