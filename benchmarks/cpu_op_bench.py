#!/usr/bin/env python
"""CPU steering-op benchmark: the compiled CPU op against its baselines, all measured in the same run.

Per batch B x logits width V x number of styles (one op holds them all; row r uses style r mod S;
every row steered, strength 0.3, exact mode), milliseconds per step, median over repeats:
- CPU op (kernels/cpu_kernel.py), one thread, and with --threads N numba threads;
- the torch reference op (kernels/reference.py), the previous CPU path;
- the naive per-request loop: vllm_ngram_style.naive_processor.steer_row once per row (what the
  naive V1 processor runs per request);
- one in-place pass over the logits, logits.add_(row vector): a memory-bound floor;
- adaptive strength's entropy: the CPU op's streaming normalised_entropy vs adaptive.adaptive_scale
  (a full softmax), per (B, V).
Real packs (default): counted with SmolLM2's tokenizer (V = 49152) from Don Quixote, Austen, the
Bible and Brown news (../shared/corpora; cached), contexts cut from each style's own text, so rows
match as generated text would; V = 128256 pads the logits wider than the pack's vocabulary. Each
configuration first checks the CPU op against the reference op (allclose).

  python benchmarks/cpu_op_bench.py           # full run; appends to benchmarks/RESULTS.md, draws a PNG
  python benchmarks/cpu_op_bench.py --quick   # tiny synthetic pack, a few seconds (tests run this)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, ROOT, bootstrap  # noqa: E402
from numba import njit  # noqa: E402

bootstrap()
from vllm_ngram_style.bench.packs import REAL_STYLES, corpus_for, real_packs, token_stream  # noqa: E402
from vllm_ngram_style.bench.report import machine_description  # noqa: E402
from vllm_ngram_style.adaptive import adaptive_scale  # noqa: E402
from vllm_ngram_style.kernels.cpu_kernel import CpuSteering  # noqa: E402
from vllm_ngram_style.kernels.cpu_numeric import prefetch_line  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402
from vllm_ngram_style.naive_processor import NaiveTables, steer_row  # noqa: E402

STRENGTH = 0.3
STYLES = ("quixote", "austen", "bible", "news")  # REAL_STYLES keys, in this order
PLOT = os.path.join(ROOT, "benchmarks", "results", "cpu_op_bench.png")
CORPORA = os.path.join(ROOT, "..", "shared", "corpora")
OPS = ("cpu", "cpu_threads", "reference", "naive", "add_", "bare", "bare_prefetch")
ENTROPY_OPS = ("entropy_cpu", "entropy_cpu_threads", "entropy_torch")


class Workload:
    """Compiled styles and a source of contexts for each: real packs and their texts, or synthetic."""

    def __init__(self, quick: bool, model: str, corpora: str):
        if quick:
            from vllm_ngram_style.kernels.synthetic import sample_contexts, synth_style

            self.variants = [synth_style(i, 4096, contexts=(1, 60, 300), entries=(64, 900, 1500), top_k=64)
                             for i in range(2)]
            self._draw = lambda s, rng, rows: sample_contexts(self.variants[s], rng, rows)
            self.label = "tiny synthetic styles (V 4096, orders 1-3, top-64), contexts sampled from their tables"
            return
        from vllm_ngram_style.models import resolve_model
        from vllm_ngram_style.modes import compile_style
        from vllm_ngram_style.pack import load_pack

        model_dir = resolve_model(model)
        paths = real_packs(model_dir, STYLES, corpora)
        self.variants = [compile_style(load_pack(paths[s]), "exact", name=s) for s in STYLES]
        streams = [np.asarray(token_stream(model_dir, corpus_for(s, corpora), 200_000), dtype=np.int64) for s in STYLES]
        m = max(v.max_order for v in self.variants) - 1

        def draw(s, rng, rows):  # windows of the style's own text: [rows, m]
            pos = rng.integers(m, streams[s].shape[0], size=rows)
            return np.stack([streams[s][p - m:p] for p in pos]) if m and rows else np.zeros((rows, m), np.int64)

        self._draw = draw
        self.label = ("real packs, SmolLM2 tokenizer (V 49152), orders 1-3, top-512, exact mode: "
                      + ", ".join(STYLES) + "; contexts cut from each style's own text")

    def contexts(self, styles: int, rows: int, rng) -> np.ndarray:
        """[rows, m] int64 contexts; row r from style r mod styles."""
        out = np.zeros((rows, max(v.max_order for v in self.variants) - 1), np.int64)
        for s in range(styles):
            out[s::styles] = self._draw(s, rng, out[s::styles].shape[0])
        return out


def last_level_cache_bytes() -> int:
    """The largest CPU cache the kernel reports (0 if it reports none)."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    for d in (os.listdir(root) if os.path.isdir(root) else []):
        try:
            with open(os.path.join(root, d, "size")) as fh:
                txt = fh.read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
        sizes.append(int(txt.rstrip("KMG")) * unit)
    return max(sizes, default=0)


class Evictor:
    """Pushes every earlier array out of the CPU caches: one in-place pass over a buffer twice the
    last-level cache (at least 64 MiB). A decoding step meets its logits this way at large batches: the
    model's weights streamed through the caches since the logits' rows were last touched."""

    def __init__(self):
        self.buf = torch.zeros(max(64 << 20, 2 * last_level_cache_bytes()) // 4)  # [N] float32

    def __call__(self):
        self.buf.add_(1.0)


@njit(nogil=True)
def bare_loop(out, offsets, values):
    """The issue's yardstick: a compiled loop over the (row, token) entries with their scaled deltas
    already resolved (no lookups, no decoding): out[offsets[i]] += values[i]."""
    for i in range(offsets.shape[0]):
        out[offsets[i]] += values[i]


BARE_PREFETCH = 256  # entries ahead: the best of 16-1024 here (a steady stream of requests in flight)


@njit(nogil=True)
def bare_loop_prefetch(out, offsets, values, ahead):
    """bare_loop with a prefetch of the entry `ahead` places on (cpu_numeric.prefetch_line, the op's hint):
    what a loop over resolved entries can reach when memory requests stay in flight (the floor the CPU
    op is compared with)."""
    n = offsets.shape[0]
    for i in range(n):
        if i + ahead < n:
            prefetch_line(out, offsets[i + ahead])
        out[offsets[i]] += values[i]


def timed(fns: dict, repeats: int, evict) -> dict:
    """{name: median ms} of the calling thread's CPU time, each sample ONE call made right after evict()
    (untimed) pushed the logits out of cache: what a decoding step meets. Thread CPU time is what a
    single-threaded op costs its thread, whatever other jobs do with the cores: the robust figure on a
    shared machine (memory-bandwidth contention still shows). Also {name + "_wall": ...}: wall clock,
    the threaded op's only fair figure. The ops take turns within each repeat, so drifting machine
    load hits them alike."""
    for fn in fns.values():
        fn()  # warm: allocator, numba dispatch
    cpu = {name: [] for name in fns}
    wall = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            evict()
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            fn()
            wall[name].append((time.perf_counter_ns() - t0) / 1e6)
            cpu[name].append((time.thread_time_ns() - c0) / 1e6)
    out = {name: statistics.median(xs) for name, xs in cpu.items()}
    out.update({name + "_wall": statistics.median(xs) for name, xs in wall.items()})
    return out


def back_to_back(fn, calls: int = 12) -> float:
    """Median thread CPU ms of one call repeated on the same logits with nothing in between: the lines
    it touches stay in cache (small batches meet their logits so, just written by the model's last
    matmul)."""
    out = []
    for _ in range(calls):
        c0 = time.thread_time_ns()
        fn()
        out.append((time.thread_time_ns() - c0) / 1e6)
    return statistics.median(out[2:])


def bench_config(work, ops: dict, naive: list, b: int, v: int, styles: int, repeats: int, rng, entropy: bool,
                 evict) -> dict:
    cpu, cpu_threads, ref = ops[styles]
    variant = torch.arange(b, dtype=torch.int64) % styles  # [B]
    strength = torch.full((b,), STRENGTH)  # [B] float32
    ctx = torch.from_numpy(work.contexts(styles, b, rng))  # [B, m]
    prompts = ctx.tolist()  # the naive processor gets Python lists from vLLM
    logits = torch.randn(b, v)  # [B, V] float32
    bias = torch.randn(v) * 1e-3  # [V]
    # correctness first: the CPU op against the reference op on this configuration's rows
    want = ref.apply(logits.clone(), variant, strength, ctx)
    got = cpu.apply(logits.clone(), variant, strength, ctx)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    if cpu_threads is not None:
        assert torch.equal(cpu_threads.apply(logits.clone(), variant, strength, ctx), got)
    rows, toks, vals = ref.entries(variant, strength, ctx)
    keep = (toks < v).numpy()
    by_row = np.argsort(rows.numpy()[keep], kind="stable")  # row by row, as the op goes (orders in turn)
    offsets = (rows.to(torch.int64) * v + toks.to(torch.int64)).numpy()[keep][by_row]  # [E] flat logit index
    values = vals.to(torch.float32).numpy()[keep][by_row]  # [E] the scaled deltas
    flat = logits.view(-1).numpy()  # [B * V] view
    s32 = float(np.float32(STRENGTH))

    def naive_step():
        for r in range(b):
            steer_row(naive[r % styles], s32, prompts[r], [], logits[r])

    fns = {"cpu": lambda: cpu.apply(logits, variant, strength, ctx),
           "reference": lambda: ref.apply(logits, variant, strength, ctx),
           "naive": naive_step, "add_": lambda: logits.add_(bias), "bare": lambda: bare_loop(flat, offsets, values),
           "bare_prefetch": lambda: bare_loop_prefetch(flat, offsets, values, BARE_PREFETCH)}
    if cpu_threads is not None:
        fns["cpu_threads"] = lambda: cpu_threads.apply(logits, variant, strength, ctx)
    if entropy:
        torch.testing.assert_close(cpu.normalised_entropy(logits), adaptive_scale(logits), atol=1e-5, rtol=0)
        fns["entropy_cpu"] = lambda: cpu.normalised_entropy(logits)
        fns["entropy_torch"] = lambda: adaptive_scale(logits)
        if cpu_threads is not None:
            fns["entropy_cpu_threads"] = lambda: cpu_threads.normalised_entropy(logits)
    out = dict(B=b, V=v, styles=styles, entries_per_row=rows.numel() / b, **timed(fns, repeats, evict),
               cpu_b2b=back_to_back(fns["cpu"]), add_b2b=back_to_back(fns["add_"]))
    print(row_md(out), flush=True)
    return out


_WARM = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from _common import bootstrap
bootstrap()
from vllm_ngram_style.kernels.cpu_kernel import CpuSteering
from vllm_ngram_style.kernels.synthetic import synth_style
style = synth_style(0, 512, contexts=(1, 20, 40), entries=(16, 60, 80), top_k=16)
t1 = time.perf_counter()
op = CpuSteering([style], threads=int(sys.argv[2]))
print(t1 - t0, op.warmup_seconds)
"""


def warmup_times(threads: int) -> dict:
    """Construction warm-up in fresh processes over an empty numba cache: (import s, warm-up s) for the
    first process (compiles) and a second one (loads the cache), per thread setting."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for t in sorted({1, threads}):
            for kind in ("compile", "cached"):
                res = subprocess.run([sys.executable, "-c", _WARM, os.path.dirname(os.path.abspath(__file__)), str(t)],
                                     env=env, capture_output=True, text=True, timeout=600)
                if res.returncode:
                    raise RuntimeError(res.stderr[-2000:])
                out[f"{kind}, {t} thread{'s' if t > 1 else ''}"] = [float(x) for x in res.stdout.split()[-2:]]
    return out


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def row_md(r: dict) -> str:
    g = r.get
    ratio = lambda a, b, f="{:.1f}": "-" if g(a) is None or g(b) is None else f.format(g(a) / g(b))  # noqa: E731
    return (f"| {r['B']} | {r['V']} | {r['styles']} | {r['entries_per_row']:.0f} | {fmt(g('cpu'))} | "
            f"{fmt(g('reference'))} | {fmt(g('naive'))} | {fmt(g('add_'))} | {fmt(g('bare'))} | {fmt(g('bare_prefetch'))} | "
            f"{ratio('reference', 'cpu')} | {ratio('cpu', 'add_', '{:.3f}')} | {ratio('naive', 'cpu')} | "
            f"{ratio('cpu', 'bare', '{:.2f}')} | {ratio('bare_prefetch', 'add_', '{:.3f}')} | {fmt(g('cpu_b2b'))} | {fmt(g('add_b2b'))} | "
            f"{ratio('cpu_b2b', 'add_b2b', '{:.3f}')} | {fmt(g('cpu_wall'))} | {fmt(g('cpu_threads_wall'))} | "
            f"{fmt(g('entropy_cpu'))} | {fmt(g('entropy_torch'))} | {fmt(g('entropy_cpu_wall'))} | "
            f"{fmt(g('entropy_cpu_threads_wall'))} |")


HEAD = ("| B | V | styles | entries / row | CPU op | reference op | naive per-request | logits.add_ | bare loop | "
        "bare loop + prefetch | reference / CPU op | CPU op / add_ | naive / CPU op | CPU op / bare loop | "
        "bare loop + prefetch / add_ | CPU op, in cache | add_, in cache | "
        "in cache: CPU op / add_ | CPU op, wall | CPU op, {t} threads, wall | "
        "entropy: CPU op | entropy: torch | entropy: CPU op, wall | entropy: CPU op, {t} threads, wall |\n|"
        + "---|" * 24)


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, judged from this run's numbers."""
    out = []
    for r in rows:
        if r["B"] == 256 and r["V"] == 49152:
            speed, floor = r["reference"] / r["cpu"], r["cpu"] / r["add_"]
            out.append(f"- B=256, V=49152, {r['styles']} style(s): {speed:.1f}x faster than the reference op (goal >= 25x: "
                       f"{'met' if speed >= 25 else 'NOT met'}), {floor:.3f}x one in-place pass (goal <= 0.2x: "
                       f"{'met' if floor <= 0.2 else 'NOT met'}); bare loop + prefetch {r['bare_prefetch'] / r['add_']:.3f}x one pass; "
                       f"{r['cpu'] / r['bare']:.2f}x the bare loop over the "
                       f"same resolved entries; logits in cache: {r['cpu_b2b'] / r['add_b2b']:.3f}x one pass")
    slower = [f"B={r['B']} V={r['V']} S={r['styles']}" for r in rows if r["naive"] <= r["cpu"]]
    worst = min(rows, key=lambda r: r["naive"] / r["cpu"])
    out.append(f"- faster than the naive per-request loop at every configuration: {'met' if not slower else 'NOT met: ' + ', '.join(slower)}"
               f" (closest: B={worst['B']} V={worst['V']} S={worst['styles']}, naive / CPU op = {worst['naive'] / worst['cpu']:.1f}x)")
    return out


def plot(rows: list[dict], path: str, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocabs, counts = sorted({r["V"] for r in rows}), sorted({r["styles"] for r in rows})
    fig, axes = plt.subplots(len(vocabs), len(counts) + 1, figsize=(5 * (len(counts) + 1), 4 * len(vocabs)),
                             squeeze=False)
    names = dict(cpu="CPU op (1 thread)", cpu_threads=f"CPU op ({threads} threads)", reference="torch reference op",
                 naive="naive per-request loop", add_="one in-place pass (add_)",
                 bare="bare loop over resolved entries", bare_prefetch="bare loop + prefetch", entropy_cpu="CPU op (1 thread)",
                 entropy_cpu_threads=f"CPU op ({threads} threads)", entropy_torch="torch softmax formula")
    for i, v in enumerate(vocabs):
        for j, s in enumerate(counts + [None]):
            ax = axes[i][j]
            sel = [r for r in rows if r["V"] == v and (s is None or r["styles"] == s)]
            keys = OPS if s is not None else ENTROPY_OPS
            if s is None:
                sel = [r for r in sel if "entropy_cpu" in r]
            for k in keys:
                col = k + "_wall" if k.endswith("threads") else k  # threaded: wall clock; else thread CPU time
                pts = [(r["B"], r[col]) for r in sel if r.get(col) is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=names[k])
            ax.set(xscale="log", yscale="log", xlabel="batch B", ylabel="ms per step (thread CPU; threaded: wall)",
                   title=f"V={v}, " + (f"{s} style(s): steering" if s is not None else "adaptive entropy"))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny synthetic pack and sizes: a smoke test of a few seconds")
    ap.add_argument("--batch", nargs="+", type=int)
    ap.add_argument("--vocab", nargs="+", type=int)
    ap.add_argument("--styles", nargs="+", type=int, help="styles resident (and used round-robin by the rows)")
    ap.add_argument("--repeats", type=int, help="timed samples per op (median; default 15, --quick 2)")
    ap.add_argument("--threads", type=int, help="also time the CPU op on this many numba threads (default: cores; "
                                                  "--quick: 1, i.e. not)")
    ap.add_argument("--model", default="smollm2", help="tokenizer of the real packs (default smollm2)")
    ap.add_argument("--corpora", default=CORPORA, help=f"folder holding {', '.join(REAL_STYLES.values())} "
                                                       "(default ../shared/corpora)")
    ap.add_argument("--results", help=f"append the section here (default {os.path.relpath(RESULTS, ROOT)}; "
                                      "--quick: nowhere); '' to skip")
    ap.add_argument("--plot", help=f"PNG of ms/step vs B (default {os.path.relpath(PLOT, ROOT)}; --quick: none)")
    args = ap.parse_args(argv)
    q = args.quick
    batches = args.batch or ([1, 16] if q else [1, 16, 64, 256, 1024])
    vocabs = args.vocab or ([4096] if q else [49152, 128256])
    counts = args.styles or ([1, 2] if q else [1, 4])
    repeats = args.repeats or (2 if q else 15)
    threads = args.threads if args.threads is not None else (1 if q else os.cpu_count() or 1)
    results = args.results if args.results is not None else ("" if q else RESULTS)
    plot_path = args.plot if args.plot is not None else ("" if q else PLOT)
    torch.set_num_threads(1)
    load0, t_start = os.getloadavg(), time.perf_counter()
    warm = {} if q else warmup_times(threads)
    work = Workload(q, args.model, args.corpora)
    if max(counts) > len(work.variants):
        raise SystemExit(f"--styles up to {len(work.variants)}")
    ops, built = {}, []
    for s in counts:
        cpu = CpuSteering(work.variants[:s])
        built.append(cpu.warmup_seconds)
        ops[s] = (cpu, CpuSteering(work.variants[:s], threads=threads) if threads > 1 else None,
                  ReferenceSteering(work.variants[:s]))
    naive = [NaiveTables(v) for v in work.variants[:max(counts)]]
    rng = np.random.default_rng(0)
    print(HEAD.format(t=threads))
    evict = Evictor()
    rows = [bench_config(work, ops, naive, b, v, s, repeats, rng, entropy=(s == counts[0]), evict=evict)
            for v in vocabs for s in counts for b in batches]
    print("correctness: PASS (CPU op vs reference op on every configuration; entropy vs the torch formula)")
    load1, elapsed = os.getloadavg(), time.perf_counter() - t_start
    import numba

    cmd = shlex.join(["python", "benchmarks/cpu_op_bench.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [f"\n## CPU steering op (kernels/cpu_kernel.py) vs reference, naive and one pass ({datetime.date.today()})\n",
             f"Machine: {machine_description()}, numba {numba.__version__}, 1 torch thread; "
             f"{'**shared with other jobs**: ' if max(load0[0], load1[0]) > 1.5 else ''}load average "
             f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} at the start, {load1[0]:.1f} / "
             f"{load1[1]:.1f} / {load1[2]:.1f} at the end. Command: `{cmd}` ({elapsed / 60:.1f} min).\n",
             f"Workload: {work.label}; every row steered (strength {STRENGTH}), row r uses style r mod S. "
             f"Milliseconds per step, median of {repeats} samples, each ONE call right after a pass over a "
             f"{evict.buf.numel() * 4 >> 20} MiB buffer pushed the logits out of cache (as at a decoding step: the "
             "weights streamed through since); ops interleaved; the calling thread's CPU time (robust to other jobs "
             "on the cores; ratios use it), except the 'wall' columns (wall clock; the threaded op's only fair "
             "figure). 'bare loop': the issue's yardstick, a compiled loop adding the same entries with rows, tokens "
             "and scaled deltas already resolved (no lookups); '+ prefetch': the same with a prefetch (the op's hint) "
             f"{BARE_PREFETCH} entries ahead. 'in cache': the call repeated on the same logits "
             "with nothing in between (median of 10). "
             "'entries / row': (context, token) entries the reference op adds per row. Each "
             "configuration first checked the CPU op against the reference op (allclose 1e-4) and, threaded, bit for bit "
             "against one thread. Entropy columns (per B x V, first style count): CPU op's streaming normalised entropy "
             "vs adaptive.adaptive_scale (a full softmax with [B, V] temporaries).\n",
             HEAD.format(t=threads), *[row_md(r) for r in rows], "", *goals(rows)]
    if warm:
        lines.append("- construction warm-up (fresh process, empty numba cache, then again with the cache it wrote; "
                     "tiny pack): " + "; ".join(f"{k}: {w:.2f} s" for k, (_, w) in warm.items()))
    lines.append(f"- warm-up of the ops built in this run: {', '.join(f'{w:.2f} s' for w in built)}")
    if plot_path:
        plot(rows, plot_path, threads)
        with open(os.path.splitext(plot_path)[0] + ".json", "w") as fh:
            json.dump(dict(rows=rows, warmup=warm, command=cmd, threads=threads), fh, indent=1)
        lines.append(f"\n![CPU op vs baselines]({os.path.relpath(plot_path, os.path.dirname(RESULTS))})\n")
    section = "\n".join(lines) + "\n"
    print(section)
    if results:
        with open(results, "a") as fh:
            fh.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
