#!/usr/bin/env python
"""Per-step cost of the V2 (Model Runner V2) steering path on a GPU, against a decode step measured
in the same run.

    python benchmarks/gpu_step_bench.py               # CUDA GPU (H100/H200); results to $OUT or RESULTS.md
    python benchmarks/gpu_step_bench.py --cpu-smoke   # CPU, Triton interpreter, tiny sizes (tests run this)

Needs torch, triton and numpy only: no vLLM, no corpora, no tokenizer, nothing to install; the
package is imported from this checkout. What it runs:

- Styles: 4 synthetic styles shaped like Don Quixote with the SmolLM2 tokenizer (kernels/synthetic.py:
  16.4k bigram / 166k trigram contexts, 152k / 377k entries, top-512, Zipf-skewed ids) at V=128256,
  turned into StylePacks so the ordinary SteeringCore constructor compiles them (Triton backend).
- The adapter: vllm_ngram_style.adapters.v2.V2StyleProcessor itself (``prepared=(core, cfg)``),
  driven through its protocol (add_request per slot, apply_staged_writes, apply(logits, ctx)) with
  our own stand-ins for MRV2's request state and LogitsContext. The token history all_token_ids
  [S, L] int32 is held either in device memory or, as vLLM 0.32/0.33 keeps it by default, in UVA
  pinned host memory seen through a device view (_uva.py; checked on the device before use; the
  plugin refuses speculative decoding, the one case where vLLM keeps it in device memory). Steered
  requests use adaptive strength and a 4-gram loop guard; some histories repeat a 4-gram, so the
  guard bans tokens. Rows are a random permutation of the slots, mixed styles, strengths 0.2-0.8;
  100% and 50% steered.
- Correctness first: the adapter's output against the same adapter built on the torch reference op
  (steered rows within 1e-4, unsteered rows bit for bit); the script stops on a mismatch.
- Memory: peak extra device memory of one apply() (torch.cuda.max_memory_allocated around it), and
  of the torch softmax entropy it replaced, for contrast.
- Host-device syncs in apply: torch.cuda.set_sync_debug_mode("warn") warnings and the would-be sync
  ops of vllm_ngram_style.testing.sync_counter.SyncCounter.
- Timings per batch size (256, 1024): apply (wall clock over back-to-back calls, host time per call
  without waiting, GPU time from CUDA events with the calls queued behind a GPU sleep), the same with
  the launcher's CUDA-graph path on, add_request + apply_staged_writes, and the decode-step
  stand-in: the GEMMs of an 8B Llama at that batch in bf16 (32 layers x qkv 4096x6144, o 4096x4096,
  gate_up 4096x28672, down 14336x4096, + lm_head 4096x128256; one layer's weights reused by all 32
  layers: each is far larger than L2, so every GEMM still streams its weights from memory).
"""
from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# this folder, for _common: `python benchmarks/X.py` puts it on sys.path, runpy.run_path (a test) does not
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, bootstrap, describe_run, out_dir, pick_device, table_shape, write_results  # noqa: E402

bootstrap()

from _uva import check_uva, token_history  # noqa: E402
from vllm_ngram_style.adapters.v2 import V2StyleProcessor  # noqa: E402
from vllm_ngram_style.adaptive import adaptive_scale  # noqa: E402
from vllm_ngram_style.config import StyleConfig  # noqa: E402
from vllm_ngram_style.kernels.reference import ReferenceSteering  # noqa: E402
from vllm_ngram_style.kernels.synthetic import chain_weights, sample_contexts, synth_style  # noqa: E402
from vllm_ngram_style.steering_core import SteeringCore  # noqa: E402
from vllm_ngram_style.testing import vllm_stand_ins as vs  # noqa: E402
from vllm_ngram_style.testing.sync_counter import SyncCounter  # noqa: E402
from vllm_ngram_style.testing.synthetic_packs import pack_from_compiled  # noqa: E402

PROMPT_LEN = 4
LOOP_GUARD = 4


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
    ref_core = copy.copy(core)  # the same variants and ids, the torch reference op
    ref_core.op = ReferenceSteering(core.variants, device)
    return core, ref_core, cfg, styles, weights


def make_step(core, ref_core, cfg, styles, weights, batch, vocab, hist_len, fraction, device, rng, where):
    """Two V2 adapters (Triton core, reference core) over one request state with `batch` live requests
    (slot = request; history in device memory or UVA), and one step's logits and context."""
    ids = np.asarray(rng.integers(0, vocab, size=(batch, hist_len)), dtype=np.int32)  # [S, L]
    pos = rng.integers(24, hist_len - 1, size=batch)  # [S] newest known token of each slot's request
    style_of = np.arange(batch) % len(styles)
    m = core.context_len
    for i, style in enumerate(styles):  # the last m tokens continue a context as generated text would
        slots = np.flatnonzero(style_of == i)
        if slots.size:
            ctx = sample_contexts(style, rng, slots.size, weights=weights[style.name])  # [n, m]
            for j in range(m):
                ids[slots, pos[slots] - (m - 1 - j)] = ctx[:, j]
    for s in range(0, batch, 3):  # a repeated 4-gram: the loop guard has a token to ban
        p = pos[s]
        ids[s, p - 20:p - 20 + LOOP_GUARD - 1] = ids[s, p - LOOP_GUARD + 2:p + 1]
    rs = vs.v2_request_states(batch, hist_len, vocab, device)
    history, host, how = token_history((batch, hist_len), torch.int32, device, where)
    if host is not None:
        how = check_uva(history, host) + "; " + how
        host.numpy()[:] = ids  # vLLM writes the history on the host side too (staged writes land there)
    else:
        history.copy_(torch.from_numpy(ids))
    rs.all_token_ids = vs.DeviceBuffer(history)
    rs.prompt_len.gpu.fill_(PROMPT_LEN)
    procs = [V2StyleProcessor(None, rs, prepared=(c, cfg)) for c in (core, ref_core)]
    steered = np.zeros(batch, bool)
    strengths = rng.uniform(0.2, 0.8, size=batch).astype(np.float32)
    for s in range(batch):
        steered[s] = fraction > 0 and int((s + 1) * fraction) > int(s * fraction)
        extra = {"style": styles[style_of[s]].name, "style_strength": float(strengths[s]), "style_adaptive": 1,
                 "style_loop_guard": LOOP_GUARD} if steered[s] else None
        for proc in procs:
            proc.add_request(s, vs.sampling_params_stand_in(extra))
    for proc in procs:
        proc.apply_staged_writes()
    slots_np = rng.permutation(batch).astype(np.int32)  # row -> slot
    row_slot = torch.from_numpy(slots_np.copy()).to(device)  # [R] int32
    row_pos = torch.from_numpy(pos[slots_np].astype(np.int64)).to(device)  # [R] int64
    ctx = vs.v2_logits_context(row_slot, row_pos, slots_np)
    logits = torch.randn(batch, vocab, device=device)  # [R, V] float32
    return dict(proc=procs[0], ref_proc=procs[1], ctx=ctx, logits=logits, steered=steered[slots_np], how=how,
                where=where)


def check(step) -> tuple[bool, str]:
    """The Triton adapter against the reference adapter on the same batch."""
    base = step["logits"]
    got = step["proc"].apply(base.clone(), step["ctx"])
    want = step["ref_proc"].apply(base.clone(), step["ctx"])
    un = torch.as_tensor(~step["steered"], device=base.device)
    same_unsteered = bool(torch.equal(got[un].view(torch.int32), base[un].view(torch.int32)))
    changed = int((got != base).any(1).sum())
    err = float((got - want).abs().max())
    close = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))
    ok = close and same_unsteered and changed == int(step["steered"].sum()) > 0
    return ok, (f"{'PASS' if ok else 'FAIL'}: {changed} steered rows changed, max |diff| vs reference {err:.3g}, "
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


def peak_extra_bytes(fn, device) -> int | None:
    """Peak device memory allocated during fn() beyond what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(step, core, styles, batch, vocab, fraction, where, dec, dec_wall, device, timer, smoke, n_fast) -> dict:
    """Syncs, memory and timings of one configuration's apply()."""
    proc, logits, ctx = step["proc"], step["logits"], step["ctx"]
    row = dict(batch=batch, vocab=vocab, fraction=fraction, styles=len(styles), history=where,
               history_how=step["how"], decode_us=dec, decode_wall_us=dec_wall,
               syncs=count_syncs(step, device, calls=1 if smoke else 3),
               apply_peak_extra_bytes=peak_extra_bytes(lambda: proc.apply(logits, ctx), device),
               torch_entropy_peak_extra_bytes=peak_extra_bytes(lambda: adaptive_scale(logits), device))

    def apply():
        proc.apply(logits, ctx)

    op = core.op
    for graphs in (False, True) if device.type == "cuda" else (False,):
        op.graphs = graphs
        tag = "graph_" if graphs else ""
        row[tag + "wall_us"] = timer.wall_us(apply, **n_fast)
        row[tag + "host_us"] = timer.host_us(apply, **n_fast)
        row[tag + "gpu_us"] = timer.gpu_us(apply, row[tag + "host_us"])
    op.graphs = False

    def stage():
        proc.add_request(0, vs.sampling_params_stand_in({"style": styles[0].name, "style_strength": 0.3}))
        proc.apply_staged_writes()

    row["stage_us"] = timer.wall_us(stage, **n_fast)
    row["fast_path"] = [f"{k}: {'fell back: ' + v.failure if v.failure else v.path}" for k, v in op.launchers.items()]
    return row


def main(argv=None) -> int:
    return run(argv)["rc"]


def run(argv=None) -> dict:
    """The whole benchmark; returns rc, markdown and the measured rows (gpu_check.py reads them)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under the Triton interpreter")
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--styles", type=int, default=4)
    ap.add_argument("--fractions", default="1,0.5", help="shares of requests steered")
    ap.add_argument("--history", default="uva,device", help="where the token history lives: uva, device")
    ap.add_argument("--budget", type=float, default=240, help="seconds after which no new batch size starts")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    smoke = args.cpu_smoke
    device = pick_device(smoke)
    if device is None:
        return dict(rc=2, md="", rows=[])
    batches = [5] if smoke else [int(x) for x in args.batches.split(",")]
    vocab = 97 if smoke else args.vocab
    fractions = [float(x) for x in args.fractions.split(",")]
    places = ["device"] if device.type != "cuda" else args.history.split(",")
    shape = table_shape(smoke)
    decode_shape = dict(hidden=32, qkv=48, inter=64, vocab=vocab, layers=2) if smoke else dict(vocab=vocab)
    run = describe_run(device, argv, __file__)
    print(f"# V2 steering step vs decode step: {run['card']}; {run['env']}; {run['date']}", flush=True)
    rng = np.random.default_rng(0)
    timer = Timer(device, smoke)
    core, ref_core, cfg, styles, weights = build_core(vocab, args.styles, shape, device)
    try:
        import vllm  # noqa: F401  (only to say what the run had)
        adapter_from = "vLLM installed; request state and logits context: our stand-ins"
    except ImportError:
        adapter_from = "a stand-in (vLLM not installed) for vLLM's request state and logits context"
    gemms = DecodeGemms(device, torch.float32 if smoke else torch.bfloat16, **decode_shape)
    notes, results, failed = [], [], False
    n_fast = dict(n=1, reps=1) if smoke else dict(n=50, reps=3)
    for batch in batches:
        if failed:
            break  # stop on a correctness mismatch
        if time.perf_counter() - t_start > args.budget:
            notes.append(f"(B={batch} skipped: time budget)")
            continue
        decode = gemms.step_for(batch)
        dec_wall = timer.wall_us(decode, **(dict(n=1, reps=1) if smoke else dict(n=3, reps=3)))
        dec_gpu = timer.gpu_us(decode, dec_wall, n=3, reps=3)
        dec = dec_gpu if dec_gpu is not None else dec_wall
        del decode
        for where in places:
            for fraction in fractions:
                if failed:
                    break
                step = make_step(core, ref_core, cfg, styles, weights, batch, vocab, 64 if smoke else 4096, fraction,
                                 device, rng, where)
                ok, verdict = check(step)
                label = f"B={batch} history {where} steered {fraction:.0%}"
                print(f"{label}: correctness {verdict}", flush=True)
                if not ok:
                    failed = True
                    notes.append(f"{label}: correctness {verdict}")
                    continue
                try:  # correctness passed: a measurement that raises is reported, the others still run
                    results.append(measure(step, core, styles, batch, vocab, fraction, where, dec, dec_wall, device,
                                           timer, smoke, n_fast))
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"{label}: measurement raised {type(exc).__name__}: {exc}")
                    print(traceback.format_exc(), flush=True)
                    continue
                print(json.dumps(results[-1]), flush=True)
                del step
    md = render(results, run, adapter_from, notes, time.perf_counter() - t_start, core)
    print(md)
    if out_dir():
        os.makedirs(out_dir(), exist_ok=True)
        with open(os.path.join(out_dir(), "gpu_step_bench.json"), "w") as fh:
            json.dump(dict(run=run, rows=results), fh, indent=1)
    if not failed:
        where = write_results(md, "gpu_step_bench", device, not args.no_append)
        if where:
            print(f"written to {where}")
    return dict(rc=1 if failed else 0, md=md, rows=results)


def _f(x, scale=1.0, digits=1):
    return "-" if x is None else f"{x / scale:,.{digits}f}"


def render(results, run, adapter_from, notes, elapsed, core) -> str:
    head = (f"## V2 steering step vs decode step: {run['card']} ({run['date']})\n\n"
            f"`{run['command']}` ({elapsed:.0f} s); {run['env']}; {adapter_from}. "
            f"Tables: {core.op.tables.summary()}. Decode step = bf16 GEMMs of an 8B Llama (32 layers + lm_head), "
            "CUDA events. Steering = V2StyleProcessor.apply (Triton op, fast launch path) with adaptive strength and a "
            f"{LOOP_GUARD}-gram loop guard on every steered request: wall = back-to-back calls incl. waiting for the GPU; "
            "host = time the call takes on the host; GPU = CUDA events. Memory = peak extra device memory of one apply() "
            "(torch.cuda.max_memory_allocated around it); the torch softmax entropy alone, for contrast. Implied "
            "throughput = decode / (decode + steering): with the wall figure it assumes no overlap of our host work with "
            "the GPU (pessimistic); with the GPU figure, full overlap (vLLM's host running ahead).\n\n")
    table = ("| B | history | steered | decode step ms | apply wall us | apply host us | apply GPU us | graphs: wall / GPU us | "
             "apply peak extra MB (torch entropy alone) | add_request + staged writes us | steering / decode: wall, GPU | "
             "implied throughput: wall, GPU | syncs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        wr = r["wall_us"] / r["decode_us"]
        gr = None if r["gpu_us"] is None else r["gpu_us"] / r["decode_us"]
        mem = "-" if r["apply_peak_extra_bytes"] is None else \
            f"{r['apply_peak_extra_bytes'] / 1e6:.2f} ({r['torch_entropy_peak_extra_bytes'] / 1e6:.0f})"
        table += (f"| {r['batch']} | {r['history']} | {r['fraction']:.0%} ({r['styles']} styles) | "
                  f"{_f(r['decode_us'], 1e3, 2)} | {_f(r['wall_us'])} | {_f(r['host_us'])} | {_f(r['gpu_us'])} | "
                  f"{_f(r.get('graph_wall_us'))} / {_f(r.get('graph_gpu_us'))} | {mem} | {_f(r['stage_us'])} | "
                  f"{wr:.2%}, {'-' if gr is None else f'{gr:.2%}'} | {1 / (1 + wr):.2%}, "
                  f"{'-' if gr is None else f'{1 / (1 + gr):.2%}'} | {r['syncs']} |\n")
    how = sorted({r["history_how"] for r in results})
    fast = sorted({x for r in results for x in r["fast_path"]})
    return head + table + "".join(f"\n{n}\n" for n in notes + ["History: " + " / ".join(how),
                                                               "Launchers: " + "; ".join(fast)])


if __name__ == "__main__":
    sys.exit(main())
