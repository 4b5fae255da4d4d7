"""Host overhead per decoding step of the two logits-processor adapters, without a model.

    python benchmarks/host_overhead.py [--batch 256 1024] [--vocab 49152 128256] [--steps 20]

Drives the V1 processor (update_state with synthetic BatchUpdates, apply) and the V2 processor
(add_request, apply_staged_writes, apply with our own small stand-ins for Model Runner V2's request
state and LogitsContext) directly, with the real Don Quixote pack (SmolLM2 tokenizer, 3 orders,
top-512) and token histories cut from the book, at batch 256 and 1024 and logits widths 49152
(SmolLM2) and 128256 (Llama 3). Continuous batching: every step one request is replaced (V1: an
added request at an occupied index; V2: add_request on a recycled slot), so the per-batch caches
are rebuilt as they would be when requests finish and join.

Backends: "cpu" (the numba CPU kernel: the default CPU path), "reference" (the torch op), both timed for real, and "triton, launch stubbed":
the Triton path with the kernel launch replaced by a no-op recorder, i.e. every host-side op of the
adapter, core and launcher except the launch itself (whose host cost on a GPU is in
benchmarks/kernel_bench.py / gpu-notes.md). Under TRITON_INTERPRET the launch would run the kernel
in numpy on the CPU, which says nothing about a GPU.

Would-be host-device syncs in apply are counted with vllm_ngram_style.testing.sync_counter.SyncCounter
(a TorchDispatchMode; the list of ops is printed with the results). Medians over the steps.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the CPU copy of the kernel module; it is never launched here
for _k, _v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
               "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vllm_ngram_style.bench.packs import corpus_for, real_packs, token_stream  # noqa: E402
from vllm_ngram_style.bench.report import machine_description  # noqa: E402
from vllm_ngram_style.testing import vllm_stand_ins as vs  # noqa: E402
from vllm_ngram_style.testing.sync_counter import SYNC_OPS_DOC, SyncCounter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(ROOT, "benchmarks", "RESULTS.md")
CORPORA = os.path.join(ROOT, "..", "shared", "corpora")

PROMPT_LEN = 8
STRENGTH = 0.3


class Stream:
    """Natural token ids, handed out in windows (histories that hit the pack's contexts as text does)."""

    def __init__(self, ids):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.pos = 0

    def take(self, n: int) -> list:
        if self.pos + n > len(self.ids):
            self.pos = 0
        out = self.ids[self.pos:self.pos + n].tolist()
        self.pos += n
        return out


def _extra(i: int, fraction: float):
    steered = fraction > 0 and int((i + 1) * fraction) > int(i * fraction)
    return {"style": "quixote", "style_strength": STRENGTH} if steered else None


def _stub_launch(proc):
    """Replace the Triton launch by a recorder; returns the list of launched row counts."""
    launched = []
    proc.core.op._launch = lambda r, *launch_args: launched.append(r)
    return launched


def _median_us(xs) -> float:
    return 1e6 * statistics.median(xs)


_NAIVE = {}  # the naive processor's dict tables take seconds to build: one instance, reset between runs


def bench_v1(cfg, backend: str, batch: int, vocab: int, fraction: float, steps: int, stream: Stream) -> dict:
    """backend "naive": the naive per-request processor (naive_processor.py) through the same protocol."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from vllm_ngram_style import NgramStyleLogitsProcessor

    if backend == "naive":
        from vllm_ngram_style.naive_processor import NaiveStyleLogitsProcessor

        if "proc" not in _NAIVE:
            _NAIVE["proc"] = NaiveStyleLogitsProcessor(cfg, torch.device("cpu"), False)
        proc = _NAIVE["proc"]
        proc.req_info.clear()
        launched = None
    else:
        os.environ["NGRAM_STYLE_BACKEND"] = backend
        proc = NgramStyleLogitsProcessor(cfg, torch.device("cpu"), False)
        launched = _stub_launch(proc) if backend == "triton" else None
    outputs = [stream.take(PROMPT_LEN) for _ in range(batch)]  # live output lists
    added = [(i, SamplingParams(extra_args=_extra(i, fraction)), stream.take(PROMPT_LEN), outputs[i])
             for i in range(batch)]
    t = time.perf_counter()
    proc.update_state(BatchUpdate(batch, [], added, []))
    first_add = time.perf_counter() - t
    logits = torch.randn(batch, vocab)  # [B, V]
    upd_t, apply_t = [], []
    counts = None
    for step in range(steps + 3):
        for out in outputs:  # the sampler appended one token to every request
            out.append(stream.take(1)[0])
        k = (step * 7919) % batch  # one request finishes, a new one takes its index
        outputs[k] = stream.take(PROMPT_LEN)
        upd = BatchUpdate(batch, [], [(k, SamplingParams(extra_args=_extra(k, fraction)), stream.take(PROMPT_LEN),
                                       outputs[k])], [])
        t0 = time.perf_counter()
        proc.update_state(upd)
        t1 = time.perf_counter()
        if step == steps + 2:  # the last step is counted, not timed
            with SyncCounter() as counts:
                proc.apply(logits)
            break
        proc.apply(logits)
        t2 = time.perf_counter()
        if step >= 2:  # warm-up steps excluded
            upd_t.append(t1 - t0)
            apply_t.append(t2 - t1)
    if launched is not None:
        assert not fraction or len(launched) == steps + 3, "one launch per steered step"
    return dict(adapter="V1 naive" if backend == "naive" else "V1", backend=backend, batch=batch, vocab=vocab, fraction=fraction,
                setup_us=1e6 * first_add, state_us=_median_us(upd_t), staged_us=float("nan"),
                apply_us=_median_us(apply_t), ops=counts.ops, syncs=dict(counts.syncs))


def bench_v2(cfg, backend: str, batch: int, vocab: int, fraction: float, steps: int, stream: Stream) -> dict:
    from vllm import SamplingParams

    from vllm_ngram_style.adapters.v2 import V2StyleProcessor as V2  # noqa: N813

    os.environ["NGRAM_STYLE_BACKEND"] = backend
    max_len = PROMPT_LEN + steps + 8
    rs = vs.v2_request_states(batch, max_len, vocab, "cpu")
    ids = rs.all_token_ids.gpu  # [S, L]
    for s in range(batch):
        ids[s, :PROMPT_LEN] = torch.tensor(stream.take(PROMPT_LEN), dtype=ids.dtype)
    rs.prompt_len.gpu.fill_(PROMPT_LEN)
    proc = V2(cfg, rs)
    launched = _stub_launch(proc) if backend == "triton" else None
    t = time.perf_counter()
    for s in range(batch):
        proc.add_request(s, SamplingParams(extra_args=_extra(s, fraction)))
    proc.apply_staged_writes()
    first_add = time.perf_counter() - t
    rng = np.random.default_rng(0)
    slots_np = rng.permutation(batch).astype(np.int32)  # batch row -> slot (vLLM reorders rows)
    row_slot = torch.from_numpy(slots_np.copy())  # [B] int32, "on the device"
    pos = torch.full((batch,), PROMPT_LEN - 1, dtype=torch.int64)  # [B] newest known token per row
    logits = torch.randn(batch, vocab)  # [B, V]
    add_t, staged_t, apply_t = [], [], []
    counts = None
    for step in range(steps + 3):
        k = (step * 7919) % batch  # a finished request's slot is recycled
        t0 = time.perf_counter()
        proc.add_request(k, SamplingParams(extra_args=_extra(k, fraction)))
        t1 = time.perf_counter()
        proc.apply_staged_writes()
        t2 = time.perf_counter()
        ctx = vs.v2_logits_context(row_slot, pos, slots_np)
        if step == steps + 2:
            with SyncCounter() as counts:
                proc.apply(logits, ctx)
            break
        proc.apply(logits, ctx)
        t3 = time.perf_counter()
        if step >= 2:
            add_t.append(t1 - t0)
            staged_t.append(t2 - t1)
            apply_t.append(t3 - t2)
        # The sampler appends a token at pos + 1 of each row's slot (not timed).
        pos += 1
        ids[row_slot.long(), pos] = torch.tensor(stream.take(batch), dtype=ids.dtype)
    if launched is not None:
        assert not fraction or len(launched) == steps + 3, "one launch per steered step"
    return dict(adapter="V2", backend=backend, batch=batch, vocab=vocab, fraction=fraction,
                setup_us=1e6 * first_add, state_us=_median_us(add_t), staged_us=_median_us(staged_t),
                apply_us=_median_us(apply_t), ops=counts.ops, syncs=dict(counts.syncs))


def table(rows) -> str:
    head = ("| adapter | backend | B | V | steered | update_state / add_request us | apply_staged_writes us | "
            "apply ms | torch ops in apply | would-be syncs in apply |\n|---|---|---|---|---|---|---|---|---|---|\n")
    out = []
    for r in rows:
        syncs = ", ".join(f"{k} {v}" for k, v in sorted(r["syncs"].items())) or "**0**"
        staged = "-" if r["staged_us"] != r["staged_us"] else f"{r['staged_us']:.1f}"
        out.append(f"| {r['adapter']} | {r['backend_label']} | {r['batch']} | {r['vocab']} | {r['fraction']:.0%} | "
                   f"{r['state_us']:.1f} | {staged} | {r['apply_us'] / 1e3:.3f} | {r['ops']} | {syncs} |")
    return head + "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--vocab", nargs="+", type=int, default=[49152, 128256])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--backends", nargs="+", default=["cpu", "reference", "triton", "naive"],
                    choices=["cpu", "reference", "triton", "naive"],
                    help="naive: the naive per-request processor (V1 protocol only), for contrast")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration (default 20)")
    ap.add_argument("--model", default="smollm2", help="model folder whose tokenizer the pack uses (default smollm2)")
    ap.add_argument("--pack", help="a .stylepack for that tokenizer (default: Don Quixote, counted and cached)")
    ap.add_argument("--results", default=RESULTS_MD, help="append the section here ('' to skip)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from vllm_ngram_style.models import resolve_model

    model_dir = resolve_model(args.model)
    pack = args.pack or real_packs(model_dir, ["quixote"], CORPORA)["quixote"]
    cfg = vs.fake_vllm_config(model_dir, {"quixote": pack})
    stream = Stream(token_stream(model_dir, corpus_for("quixote", CORPORA), 200_000))
    rows = []
    t_start = time.perf_counter()
    for backend in args.backends:
        for batch in args.batch:
            for vocab in args.vocab:
                for fraction in args.fractions:
                    for fn in (bench_v1,) if backend == "naive" else (bench_v1, bench_v2):
                        r = fn(cfg, backend, batch, vocab, fraction, args.steps, stream)
                        r["backend_label"] = {"cpu": "CPU kernel (numba)", "reference": "reference (torch)", "triton": "triton, launch stubbed",
                                              "naive": "per-request Python"}[backend]
                        rows.append(r)
                        print(table([r]).splitlines()[-1], flush=True)
    elapsed = time.perf_counter() - t_start
    load = os.getloadavg()
    section = (
        f"\n## Host overhead per decoding step, V1 and V2 adapters without a model ({datetime.date.today()})\n\n"
        f"Machine: {machine_description()}, 1 torch thread; **shared with other jobs** (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}). Command: `{shlex.join(['python', 'benchmarks/host_overhead.py'] + (argv if argv is not None else sys.argv[1:]))}` "
        f"({elapsed / 60:.1f} min).\n\n"
        f"Real Don Quixote pack (SmolLM2 tokenizer, orders 1-3, top-512, exact mode, strength {STRENGTH}), "
        f"histories cut from the book; one request replaced per step (continuous batching: V1 caches are rebuilt "
        f"every step, V2 stages one slot). Medians over {args.steps} steps after 2 warm-up steps. "
        "'triton, launch stubbed': the Triton path with the kernel launch replaced by a no-op, i.e. the host cost of "
        "everything but the launch (on a GPU add the launch itself: ~32 us standard, less through the fast path or "
        "a CUDA graph; see benchmarks/kernel_bench.py). The reference rows are the real CPU cost of the op; 'V1 naive' "
        "is the naive per-request processor (vllm_ngram_style/naive_processor.py) for contrast. "
        "Would-be syncs are counted over one apply() call.\n\n"
        + table(rows) + "\n" + "\n".join("    " + line for line in SYNC_OPS_DOC.splitlines()) + "\n")
    print(section)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
