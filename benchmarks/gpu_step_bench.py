#!/usr/bin/env python
"""Per-step cost of the V2 (Model Runner V2) steering path on a GPU, against a decode step measured
in the same run.

    python benchmarks/gpu_step_bench.py               # CUDA GPU (H100/H200), < 5 minutes; appends to RESULTS.md
    python benchmarks/gpu_step_bench.py --cpu-smoke   # CPU, Triton interpreter, tiny sizes (tests run this)

Needs torch, triton and numpy only: no vLLM, no corpora, no tokenizer, nothing to install; the
package is imported from this checkout. What it runs:

- Styles: 4 synthetic styles shaped like Don Quixote with the SmolLM2 tokenizer (kernels/synthetic.py:
  16.4k bigram / 166k trigram contexts, 152k / 377k entries, top-512, Zipf-skewed ids) at V=128256,
  turned into StylePacks so the ordinary SteeringCore constructor compiles them (Triton backend).
- The adapter: vllm_ngram_style.vllm_v2.NgramStyleLogitsProcessorV2 itself, driven through its
  protocol (add_request per slot, apply_staged_writes, apply(logits, ctx)) with our own stand-ins for
  MRV2's request state (token history [S, L] int32 on the device) and LogitsContext. Where vLLM is not
  installed, its V2 interface module is stood in for by an empty base class (the adapter only
  subclasses it), and build_core is handed the prepared core (no packs or tokenizer here).
  Rows are a random permutation of the slots, mixed styles, strengths 0.2-0.8; 100% and 50% steered.
- Correctness first: the adapter's output is compared with the torch reference op on the device
  (steered rows to float32 rounding, unsteered rows bit for bit); the script stops on a mismatch.
- Host-device syncs in apply: torch.cuda.set_sync_debug_mode("warn") warnings and the would-be sync
  ops of vllm_ngram_style.testing.sync_counter.SyncCounter, over a few calls.
- Timings per batch size (256, 1024): adapter apply (wall clock over back-to-back calls, host time
  per call without waiting, GPU time from CUDA events with the calls queued behind a GPU sleep),
  the same with the launcher's CUDA-graph path switched on, add_request + apply_staged_writes, and
  the decode-step stand-in: the GEMMs of an 8B Llama at that batch in bf16 (32 layers x qkv
  4096x6144, o 4096x4096, gate_up 4096x28672, down 14336x4096, + lm_head 4096x128256; one layer's
  weights reused by all 32 layers: each is far larger than L2, so every GEMM still streams its
  weights from memory). Ratios: steering / decode step, and the implied end-to-end throughput
  decode / (decode + steering).
"""
from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# this folder, for _common: `python benchmarks/X.py` puts it on sys.path, runpy.run_path (a test) does not
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, Timer, bootstrap, pick_device, table_shape  # noqa: E402

TIME_BUDGET_S = 240  # stop starting new batch sizes after this: one run stays under 5 minutes

bootstrap()

from vllm_ngram_style.adapters.v2 import V2StyleProcessor  # noqa: E402
from vllm_ngram_style.testing import vllm_stand_ins as vs  # noqa: E402
from vllm_ngram_style.testing.sync_counter import SyncCounter  # noqa: E402
from vllm_ngram_style.testing.synthetic_packs import pack_from_compiled  # noqa: E402
from vllm_ngram_style.kernels.synthetic import chain_weights, sample_contexts, synth_style  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402
from vllm_ngram_style.config import StyleConfig  # noqa: E402
from vllm_ngram_style.steering_core import SteeringCore  # noqa: E402


# ---- the decode-step stand-in ------------------------------------------------------------------------

class DecodeGemms:
    """The GEMMs of one decode step of a Llama-shaped model (attention, norms and the rest left out: a
    lower bound on the step). One layer's weights serve every layer; activations are per batch size."""

    def __init__(self, device, dtype, hidden=4096, qkv=6144, inter=14336, vocab=128256, layers=32):
        torch.manual_seed(0)
        self.device, self.dtype, self.layers = device, dtype, layers
        self.hidden, self.inter, self.vocab = hidden, inter, vocab
        w = lambda *shape: torch.randn(*shape, device=device, dtype=dtype) * 0.02  # noqa: E731
        self.w = [w(hidden, qkv), w(hidden, hidden), w(hidden, 2 * inter)]  # qkv [h, qkv], o [h, h], gate_up [h, 2i]
        self.w_down = w(inter, hidden)  # [i, h]
        self.lm_head = w(hidden, vocab)  # [h, V]

    def step_for(self, batch):
        """-> a callable running one step's GEMMs at this batch size, outputs preallocated."""
        x = torch.randn(batch, self.hidden, device=self.device, dtype=self.dtype)  # [B, h]
        h = torch.randn(batch, self.inter, device=self.device, dtype=self.dtype)  # [B, i]
        outs = [torch.empty(batch, w.shape[1], device=self.device, dtype=self.dtype) for w in self.w]
        out_down = torch.empty(batch, self.hidden, device=self.device, dtype=self.dtype)
        logits = torch.empty(batch, self.vocab, device=self.device, dtype=self.dtype)

        def run():
            for _ in range(self.layers):
                for w, o in zip(self.w, outs):
                    torch.mm(x, w, out=o)
                torch.mm(h, self.w_down, out=out_down)
            torch.mm(x, self.lm_head, out=logits)

        return run


# ---- the workload ------------------------------------------------------------------------------------

def build_core(vocab, n_styles, shape, device):
    t0 = time.perf_counter()
    styles = [synth_style(i, vocab, shape["contexts"], shape["entries"], shape["top_k"], name="style")
              for i in range(n_styles)]
    packs = {s.name: pack_from_compiled(s, vocab) for s in styles}
    t1 = time.perf_counter()
    core = SteeringCore(packs, ("exact",), device, backend="triton")
    t2 = time.perf_counter()
    cfg = StyleConfig({name: f"<synthetic {name}>" for name in packs}, ("exact",))
    weights = {s.name: chain_weights(s) for s in styles}
    print(f"tables: {core.op.tables.summary()} (synthesised in {t1 - t0:.1f} s, compiled + built in {t2 - t1:.1f} s)",
          flush=True)
    return core, cfg, styles, weights


def make_step(core, cfg, styles, weights, batch, vocab, hist_len, fraction, device, rng):
    """A V2 adapter with `batch` live requests (slot = request), and one step's logits and context."""
    rs = vs.v2_request_states(batch, hist_len, vocab, device)
    ids = np.asarray(rng.integers(0, vocab, size=(batch, hist_len)), dtype=np.int32)  # [S, L]
    pos = rng.integers(8, hist_len - 1, size=batch)  # [S] newest known token of each slot's request
    style_of = np.arange(batch) % len(styles)
    m = core.context_len
    for i, style in enumerate(styles):  # the last m tokens continue a context as generated text would
        slots = np.flatnonzero(style_of == i)
        if slots.size:
            ctx = sample_contexts(style, rng, slots.size, weights=weights[style.name])  # [n, m]
            for j in range(m):
                ids[slots, pos[slots] - (m - 1 - j)] = ctx[:, j]
    rs.all_token_ids.gpu.copy_(torch.from_numpy(ids))
    rs.prompt_len.gpu.fill_(4)
    proc = V2StyleProcessor(None, rs, prepared=(core, cfg))
    steered = np.zeros(batch, bool)
    strengths = rng.uniform(0.2, 0.8, size=batch).astype(np.float32)
    for s in range(batch):
        steered[s] = fraction > 0 and int((s + 1) * fraction) > int(s * fraction)
        extra = {"style": styles[style_of[s]].name, "style_strength": float(strengths[s])} if steered[s] else None
        proc.add_request(s, vs.sampling_params_stand_in(extra))
    proc.apply_staged_writes()
    slots_np = rng.permutation(batch).astype(np.int32)  # row -> slot
    row_slot = torch.from_numpy(slots_np.copy()).to(device)  # [R] int32
    row_pos = torch.from_numpy(pos[slots_np].astype(np.int64)).to(device)  # [R] int64
    ctx = vs.v2_logits_context(row_slot, row_pos, slots_np)
    logits = torch.randn(batch, vocab, device=device)  # [R, V] float32
    return dict(proc=proc, rs=rs, ctx=ctx, logits=logits, ids=ids, pos=pos, slots_np=slots_np, steered=steered,
                strengths=strengths, style_of=style_of)


def check(step, core, device) -> tuple[bool, str]:
    """The adapter against the torch reference op, row by row of the same batch."""
    ref = ReferenceSteering(core.variants, device)
    m = core.context_len
    slots = step["slots_np"]
    variant = np.where(step["steered"][slots], step["style_of"][slots], -1)  # variant id = style index (1 mode)
    ctx = np.stack([step["ids"][s, step["pos"][s] - m + 1: step["pos"][s] + 1] for s in slots]).astype(np.int64)
    base = step["logits"].clone()
    want = base.clone()
    ref.apply(want, torch.as_tensor(variant, device=device), torch.as_tensor(step["strengths"][slots], device=device),
              torch.as_tensor(ctx, device=device).reshape(len(slots), m))
    got = step["proc"].apply(base.clone(), step["ctx"])
    un = torch.as_tensor(variant < 0, device=device)
    same_unsteered = bool(torch.equal(got[un].view(torch.int32), base[un].view(torch.int32)))
    changed = int((got != base).any(1).sum())
    try:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        close = True
        err = float((got - want).abs().max())
    except AssertionError as exc:
        close, err = False, str(exc).splitlines()[0]
    ok = close and same_unsteered and changed == int((variant >= 0).sum()) > 0
    return ok, (f"{'PASS' if ok else 'FAIL'}: {changed} steered rows changed, max |diff| vs reference {err}, "
                f"unsteered rows bit-identical: {same_unsteered}")


def count_syncs(step, device, calls=3) -> str:
    proc, logits, ctx = step["proc"], step["logits"], step["ctx"]
    with SyncCounter() as c:
        for _ in range(calls):
            proc.apply(logits, ctx)
    text = f"would-be sync ops {dict(c.syncs) or 0} over {calls} apply calls ({c.ops // calls} torch ops per call)"
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(calls):
                    proc.apply(logits, ctx)
                torch.cuda.synchronize()  # our own wait: not counted (after the calls)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        text += f"; CUDA sync-debug warnings: {sum('synchroniz' in str(w.message) for w in caught)}"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under the Triton interpreter")
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--styles", type=int, default=4)
    ap.add_argument("--fractions", default="1,0.5", help="shares of requests steered")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="also write gpu_step_bench.{md,json} here")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    device = pick_device(smoke)
    if device is None:
        return 2
    batches = [5] if smoke else [int(x) for x in args.batches.split(",")]
    vocab = 97 if smoke else args.vocab
    fractions = [float(x) for x in args.fractions.split(",")]
    shape = table_shape(smoke)
    decode_shape = dict(hidden=32, qkv=48, inter=64, vocab=vocab, layers=2) if smoke else dict(vocab=vocab)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter; NOT performance)"
    import triton

    env = f"torch {torch.__version__}, triton {triton.__version__}, numpy {np.__version__}"
    print(f"# V2 steering step vs decode step: {card}; {env}; {datetime.date.today()}", flush=True)
    rng = np.random.default_rng(0)
    timer = Timer(device)
    core, cfg, styles, weights = build_core(vocab, args.styles, shape, device)
    try:
        import vllm  # noqa: F401  (only to say what the run had)
        adapter_from = "vLLM installed; request state and logits context: our stand-ins"
    except ImportError:
        adapter_from = "a stand-in (vLLM not installed) for vLLM's request state and logits context"
    gemms = DecodeGemms(device, torch.float32 if smoke else torch.bfloat16, **decode_shape)
    lines, results, failed = [], [], False
    n_fast = dict(n=1, reps=1) if smoke else dict(n=50, reps=3)
    for batch in batches:
        if time.perf_counter() - t_start > TIME_BUDGET_S:
            lines.append(f"(B={batch} skipped: time budget)")
            continue
        decode = gemms.step_for(batch)
        dec_wall = timer.wall_us(decode, **(dict(n=1, reps=1) if smoke else dict(n=3, reps=3)))
        dec_gpu = timer.gpu_us(decode, dec_wall, n=3, reps=3)
        dec = dec_gpu if dec_gpu is not None else dec_wall
        del decode
        for fraction in fractions:
            step = make_step(core, cfg, styles, weights, batch, vocab, 64 if smoke else 4096, fraction, device, rng)
            ok, verdict = check(step, core, device)
            print(f"B={batch} steered {fraction:.0%}: correctness {verdict}", flush=True)
            if not ok:
                failed = True
                lines.append(f"B={batch} steered {fraction:.0%}: correctness {verdict}")
                continue
            syncs = count_syncs(step, device, calls=1 if smoke else 3)
            proc, logits, ctx = step["proc"], step["logits"], step["ctx"]

            def apply():
                proc.apply(logits, ctx)

            def stage():
                proc.add_request(0, vs.sampling_params_stand_in({"style": styles[0].name, "style_strength": 0.3}))
                proc.apply_staged_writes()

            op = core.op
            row = dict(batch=batch, vocab=vocab, fraction=fraction, styles=len(styles),
                       decode_us=dec, decode_wall_us=dec_wall, syncs=syncs)
            for graphs in (False, True) if device.type == "cuda" else (False,):
                op.graphs = graphs
                tag = "graph_" if graphs else ""
                row[tag + "wall_us"] = timer.wall_us(apply, **n_fast)
                row[tag + "host_us"] = timer.host_us(apply, **n_fast)
                row[tag + "gpu_us"] = timer.gpu_us(apply, row[tag + "host_us"])
            if device.type == "cuda":
                row["graphs_captured"] = len(getattr(op, "_graphs", ()))  # cumulative; +1 per configuration when launch keys are stable
                op.graphs = False
            row["stage_us"] = timer.wall_us(stage, **n_fast)
            results.append(row)
            print(json.dumps(row), flush=True)
    md = render(results, card, env, adapter_from, lines, time.perf_counter() - t_start, core)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_step_bench.md"), "w") as fh:
            fh.write(md)
        with open(os.path.join(args.out, "gpu_step_bench.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    if device.type == "cuda" and not args.no_append and not failed:
        with open(RESULTS, "a") as fh:
            fh.write(md)
    return 1 if failed else 0


def _f(x, scale=1.0, digits=1):
    return "-" if x is None else f"{x / scale:,.{digits}f}"


def render(results, card, env, adapter_from, notes, elapsed, core) -> str:
    head = (f"\n## V2 steering step vs decode step: {card} ({datetime.date.today()})\n\n"
            f"`python benchmarks/gpu_step_bench.py` ({elapsed:.0f} s); {env}; {adapter_from}. "
            f"Tables: {core.op.tables.summary()}. Decode step = bf16 GEMMs of an 8B Llama (32 layers + lm_head), "
            "CUDA events. Steering = NgramStyleLogitsProcessorV2.apply (Triton, fast launch path): wall = back-to-back "
            "calls incl. waiting for the GPU; host = time the call takes on the host; GPU = CUDA events. "
            "Implied throughput = decode / (decode + steering): with the wall figure it assumes no overlap of our host work "
            "with the GPU (pessimistic); with the GPU figure, full overlap (vLLM's host running ahead).\n\n")
    table = ("| B | V | steered | decode step ms | apply wall us | apply host us | apply GPU us | graphs: wall / GPU us | "
             "add_request + staged writes us | steering / decode: wall, GPU | implied throughput vs unsteered: wall, GPU | "
             "syncs |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        ratio = r["wall_us"] / r["decode_us"]
        gratio = None if r["gpu_us"] is None else r["gpu_us"] / r["decode_us"]
        gtext = "-" if gratio is None else f"{gratio:.2%}"
        gimpl = "-" if gratio is None else f"{1 / (1 + gratio):.2%}"
        table += (f"| {r['batch']} | {r['vocab']} | {r['fraction']:.0%} ({r['styles']} styles) | {_f(r['decode_us'], 1e3, 2)} | "
                  f"{_f(r['wall_us'])} | {_f(r['host_us'])} | {_f(r['gpu_us'])} | "
                  f"{_f(r.get('graph_wall_us'))} / {_f(r.get('graph_gpu_us'))} ({r.get('graphs_captured', '-')} captured) | {_f(r['stage_us'])} | {ratio:.2%}, {gtext} | "
                  f"{1 / (1 + ratio):.2%}, {gimpl} | {r['syncs']} |\n")
    return head + table + "".join(f"\n{n}\n" for n in notes)


if __name__ == "__main__":
    sys.exit(main())
