"""The Triton steering kernel against the torch reference op and the dense float64 formula, on CPU.

Here the kernel runs in Triton's interpreter. TRITON_INTERPRET=1 is set below, before anything
imports the kernel. If triton was imported earlier without it (vLLM imports triton, so another
test module may have), the kernel module still hands CPU tensors an interpreted copy:
test_cpu_path_independent_of_import_order checks that in a fresh process. The interpreter runs
each program in Python, so every case is small.

Tolerances: kernel vs reference (both float32 logits, the kernel fusing x + s*delta): 2e-5
absolute + 1e-5 relative; positions the reference does not touch must be bit-identical. Dense
formula: the kernel's log-softmax equals the float64 log-softmax of z + lambda sum_n w_n log P_n
within 1e-4 (the per-row constant log(k / (N + kV)) drops out).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import NaiveModel, random_docs, random_pack
from vllm_ngram_style.errors import StylePackError
from vllm_ngram_style.kernels import gpu_tables as gt
from vllm_ngram_style.kernels import steer_kernel as sk
from vllm_ngram_style.kernels.launcher import TritonSteering
from vllm_ngram_style.kernels.synthetic import DON_QUIXOTE, synth_style
from vllm_ngram_style.contract import CompiledOrder, CompiledStyle
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.kernels.reference import ReferenceSteering

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(block=16, probe=4)  # small blocks: contexts span several entry blocks and probe blocks


def contexts(rng, docs, rows, m, short=0.25, foreign=0.2, vocab=50):
    """[rows, m] right-aligned contexts, -1 padded: mostly real histories (every order can match),
    some short ones, some with random (absent) tokens, a few beyond any vocabulary."""
    ctx = torch.full((rows, m), -1, dtype=torch.int64)
    for r in range(rows):
        d = docs[rng.integers(len(docs))]
        end = int(rng.integers(1, len(d) + 1))
        h = [int(x) for x in d[max(0, end - m):end]]
        if rng.random() < short:
            h = h[len(h) - int(rng.integers(0, len(h) + 1)):]
        if h and rng.random() < foreign:
            h[int(rng.integers(len(h)))] = int(rng.choice([rng.integers(0, vocab), 10 ** 6, 2 ** 31 - 1]))
        if h and m:
            ctx[r, m - len(h):] = torch.tensor(h)
    return ctx


def touched_mask(ref, logits, variant, strength, ctx):
    rows, toks, _ = ref.entries(variant, strength, ctx)
    keep = toks < logits.shape[1]
    mask = torch.zeros(logits.shape, dtype=torch.bool)
    mask[rows[keep], toks[keep]] = True
    return mask


def check(ts, ref, logits, variant, strength, ctx, row_scale=None):
    """Kernel == reference within tolerance; every position the reference leaves alone is bit-identical."""
    eff = strength if row_scale is None else strength * (row_scale if strength.dim() == 1 else row_scale[:, None])
    expect = ref.apply(logits.clone(), variant, eff, ctx)
    got = ts.apply(logits.clone(), variant, strength, ctx, row_scale=row_scale)
    torch.testing.assert_close(got, expect, atol=2e-5, rtol=1e-5, equal_nan=True)
    mask = touched_mask(ref, logits, variant, eff, ctx)
    assert torch.equal(got.view(torch.int32)[~mask], logits.view(torch.int32)[~mask])
    return got, mask


def orders_hit(tables, variant, ctx):
    """Set of orders matched by any row (host mirror of the lookups), so tests can assert coverage."""
    return {n for v, c in zip(variant.tolist(), ctx.tolist()) for n, _, _ in gt.lookup_host(tables, v, c)}


def test_constants_match_the_table_layout():
    assert sk._MULT_A.value == gt.MULT_A and sk._MULT_B.value == gt.MULT_B and sk._LAST_FLAG.value == gt.LAST_FLAG
    assert (sk._H_NUM_ENTRIES.value, sk._H_ENT_BASE.value, sk._H_UNI_BASE.value, sk._H_NUM_VARIANTS.value) == \
        (gt.H_NUM_ENTRIES, gt.H_ENT_BASE, gt.H_UNI_BASE, gt.H_NUM_VARIANTS)
    assert (gt.H_TB, gt.H_VB, gt.H_SB, gt.H_K0, gt.H_KW) == tuple(sk._H_TB.value + i for i in range(5))
    assert (sk._HEADER_WORDS.value, sk._ORDER_FIELDS.value) == (gt.HEADER_WORDS, gt.ORDER_FIELDS)
    assert (gt.O_SLOT_BASE, gt.O_HOME_RANGE, gt.O_TOTAL_SLOTS, gt.O_PROBE_BLOCKS, gt.O_WORDS, gt.O_SEED) == \
        (0, 1, 2, 3, 4, 5)  # the kernel reads them as hb + 0..5
    for kind, (entry, args, consts) in sk.ENTRY_POINTS.items():
        names = list(inspect.signature(getattr(sk, entry).fn).parameters)
        assert tuple(names) == args + consts, kind


def test_host_lookup_mirror_matches_reference():
    """The numpy mirror of the kernel's probing finds exactly the reference's entries (many rows, no interpreter)."""
    rng = np.random.default_rng(0)
    p3, d3 = random_pack(rng, 60, 3, top_k=7)
    p5, d5 = random_pack(rng, 40, 5, top_k=3)
    variants = [compile_style(p3, "exact"), compile_style(p3, "paper"), compile_style(p5, "exact")]
    ref = ReferenceSteering(variants)
    for load_factor, probe in ((0.5, 16), (0.95, 1)):
        tables = gt.build_tables(variants, None, load_factor=load_factor, probe=probe)
        ctx = torch.cat([contexts(rng, d3, 80, 4), contexts(rng, d5, 80, 4)])
        variant = torch.tensor(rng.integers(-1, 3, size=160))
        assert orders_hit(tables, variant, ctx) == {1, 2, 3, 4, 5}
        for r in range(160):
            _, toks, vals = ref.entries(variant[r:r + 1], torch.ones(1), ctx[r:r + 1])
            expect = sorted(zip(toks.tolist(), np.round(vals.numpy(), 5).tolist()))
            got = sorted((t, round(d, 5)) for _, t, d in gt.lookup_host(tables, int(variant[r]), ctx[r].tolist()))
            assert got == expect


def test_several_variants_one_launch():
    rng = np.random.default_rng(1)
    p3, d3 = random_pack(rng, 40, 3, top_k=40)  # contexts up to 40 entries: several 16-wide blocks
    p4, d4 = random_pack(rng, 90, 4, top_k=4)
    variants = [compile_style(p3, "exact"), compile_style(p3, "paper"), compile_style(p4, "exact")]
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    assert ts.max_order == 4
    r, v = 14, 37  # V not a multiple of the block; tokens 37..89 of the tables are beyond the logits: skipped
    variant = torch.tensor([0, 1, 2, -1, 0, 1, 2, 2, 0, 1, -1, 2, 0, 1])
    strength = torch.tensor(rng.uniform(0.1, 1.5, r), dtype=torch.float32)
    strength[4] = 0.0
    ctx = torch.where(variant[:, None] == 2, contexts(rng, d4, r, 3), contexts(rng, d3, r, 3))
    logits = torch.randn(r, v) * 2
    logits[3, :5] = torch.tensor([float("nan"), float("-inf"), -0.0, float("inf"), 1e-40])  # unsteered row
    logits[4, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])  # strength 0
    logits[0, 7] = float("-inf")  # a masked token stays masked
    got, mask = check(ts, ref, logits, variant, strength, ctx)
    rows_, toks_, _ = ref.entries(variant, strength, ctx)
    assert (toks_ >= v).any()  # some matched entries lie beyond the logits: the kernel must skip them
    for row in (3, 4, 10):
        assert torch.equal(got[row].view(torch.int32), logits[row].view(torch.int32))
    assert mask.sum() > 100 and orders_hit(ts.tables, variant, ctx) == {1, 2, 3, 4}
    assert mask[variant == 2].any()
    # int32 ids and a wider context tensor (the kernel reads its last max_order-1 columns)
    wide = torch.cat([torch.full((r, 2), 5, dtype=torch.int64), ctx], 1)
    expect = ref.apply(logits.clone(), variant, strength, ctx)
    got = ts.apply(logits.clone(), variant.to(torch.int32), strength, wide)
    torch.testing.assert_close(got, expect, atol=2e-5, rtol=1e-5, equal_nan=True)


def test_exact_mode_equals_dense_formula():
    """Straight from steering-math.md: softmax(z + lambda sum_n w_n log P_n(. | c_n)) over ALL tokens, with
    counts from Counters over the raw documents. top_k >= V so that no continuation is truncated."""
    rng = np.random.default_rng(2)
    vocab, k = 30, 1e-3
    pack, docs = random_pack(rng, vocab, 3, top_k=vocab)
    naive = NaiveModel(docs, 3, top_k=vocab)
    rows = 10
    ctx = contexts(rng, docs, rows, 2, foreign=0.1, vocab=vocab)
    strength = torch.tensor(rng.uniform(0.05, 1.0, rows), dtype=torch.float32)
    logits = torch.randn(rows, vocab) * 3
    out = {}
    for mode in ("exact", "paper"):
        ts = TritonSteering([compile_style(pack, mode)], "cpu", **SMALL)
        out[mode] = ts.apply(logits.clone(), torch.zeros(rows, dtype=torch.int64), strength, ctx)
    worst = {"exact": 0.0, "paper": 0.0}
    matched_orders = set()
    for r in range(rows):
        hist = [t for t in ctx[r].tolist() if t >= 0]
        z = logits[r].double().clone()
        for n in (1, 2, 3):
            c = naive.matched(n, hist)
            if c is None:
                continue
            matched_orders.add(n)
            lp = torch.tensor([naive.log_prob(n, c, t, k, vocab) for t in range(vocab)], dtype=torch.float64)
            z += float(strength[r]) * pack.weights[n - 1] * lp
        for mode in worst:
            diff = torch.log_softmax(out[mode][r].double(), 0) - torch.log_softmax(z, 0)
            worst[mode] = max(worst[mode], float(diff.abs().max()))
    assert matched_orders == {1, 2, 3}
    assert worst["exact"] < 1e-4
    assert worst["paper"] > 1e-2  # the check discriminates: paper mode is not the dense formula


@pytest.mark.parametrize("home_range, probe", [(None, 1), (2, 16)])
def test_long_probe_chains_and_absent_contexts(home_range, probe):
    """A nearly full table probed one slot at a time: long chains, absent keys next to stored ones. With
    home_range=2 every key of an order shares one of two homes, so each lookup compares against many keys
    that differ from it in one field only (variant, or one token): only the full-key compare tells them apart."""
    rng = np.random.default_rng(3)
    pack, docs = random_pack(rng, 12, 3, top_k=3, n_docs=120)
    variants = [compile_style(pack, "exact"), compile_style(pack, "paper")]
    ts = TritonSteering(variants, "cpu", block=16, probe=probe, load_factor=0.95, max_home_range=home_range)
    ref = ReferenceSteering(variants)
    assert max(ts.tables.max_displacement) >= (3 if home_range is None else 20)  # several probe blocks
    rows = 12
    ctx = contexts(rng, docs, rows, 2, foreign=0.0)
    ctx[rows // 2:] = torch.tensor(rng.integers(0, 12, size=(rows - rows // 2, 2)))  # many absent pairs
    variant = torch.tensor(rng.integers(0, 2, size=rows))
    strength = torch.ones(rows)
    check(ts, ref, torch.randn(rows, 12), variant, strength, ctx)
    assert orders_hit(ts.tables, variant, ctx) == {1, 2, 3}


def test_empty_tables():
    def order(n, ctx, offsets, tokens, deltas):
        return CompiledOrder(n, np.asarray(ctx, np.int64).reshape(len(offsets) - 1, n - 1), np.asarray(offsets, np.int64),
                             np.asarray(tokens, np.int64), np.asarray(deltas, np.float64))

    empty = CompiledStyle("empty", "exact", [order(1, [], [0, 0], [], []), order(2, [], [0], [], []),
                                             order(3, [[1, 2], [3, 4]], [0, 0, 0], [], [])])  # contexts, no entries
    unigram = CompiledStyle("uni", "exact", [order(1, [], [0, 3], [1, 5, 70], [0.5, 1.0, 2.0])])
    ts = TritonSteering([empty, unigram], "cpu", **SMALL)
    assert ts.max_order == 3 and ts.tables.num_entries == 3
    logits = torch.randn(4, 64)
    got = ts.apply(logits.clone(), torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 2.0, 1.0, 0.5]),
                   torch.tensor([[1, 2], [1, 2], [-1, -1], [3, 4]]))
    assert torch.equal(got[[0, 2]].view(torch.int32), logits[[0, 2]].view(torch.int32))
    expect = logits.clone()
    expect[1, [1, 5]] += torch.tensor([1.0, 2.0])  # token 70 >= V = 64: skipped
    expect[3, [1, 5]] += torch.tensor([0.25, 0.5])
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=0)
    nothing = TritonSteering([], "cpu", **SMALL)  # no variants at all: every row is unsteered
    out = nothing.apply(logits.clone(), torch.tensor([0, -1, 0, 0]), torch.ones(4), torch.zeros(4, 0, dtype=torch.int64))
    assert torch.equal(out.view(torch.int32), logits.view(torch.int32))


def test_history_source_matches_context_source():
    """Mode (b): vLLM MRV2 token history [S, L] with per-slot variant/strength read through row_slot."""
    rng = np.random.default_rng(4)
    p3, d3 = random_pack(rng, 40, 3, top_k=6)
    variants = [compile_style(p3, "exact"), compile_style(p3, "paper")]
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    s_slots, length, rows, v = 6, 9, 10, 45
    hist = np.full((s_slots, length), 7, dtype=np.int64)
    for s in range(s_slots):
        d = np.concatenate(random_docs(rng, 4, 40) + [d3[s]])  # mostly corpus text
        hist[s] = d[-length:] if d.shape[0] >= length else np.pad(d, (0, length - d.shape[0]), constant_values=3)
    slot_variant = torch.tensor([0, 1, -1, 0, 1, 0], dtype=torch.int32)
    slot_strength = torch.tensor([0.7, 1.2, 1.0, 0.0, 0.4, 1.0])
    row_slot = torch.tensor([0, 1, 2, 3, 4, 5, -1, 6, 0, 1])  # -1 and 6 (= S) are out of range: unsteered
    row_last_pos = torch.tensor([8, 8, 5, 4, 0, 1, 8, 3, -1, 2])  # 0 / 1: short histories; -1: none at all
    row_scale = torch.tensor(rng.uniform(0.2, 1.0, rows), dtype=torch.float32)
    row_scale[5] = 0.0
    # The same rows in mode (a): contexts gathered in Python.
    m = ts.max_order - 1
    ctx = torch.full((rows, m), -1, dtype=torch.int64)
    variant = torch.full((rows,), -1, dtype=torch.int64)
    strength = torch.zeros(rows)
    for r in range(rows):
        s, p = int(row_slot[r]), int(row_last_pos[r])
        if not 0 <= s < s_slots:
            continue
        variant[r], strength[r] = int(slot_variant[s]), slot_strength[s]
        for age in range(m):
            if p - age >= 0:
                ctx[r, m - 1 - age] = int(hist[s, p - age])
    logits = torch.randn(rows, v)
    via_ctx, mask = check(ts, ref, logits, variant, strength, ctx, row_scale)
    for dtype in (torch.int32, torch.int64):
        via_hist = ts.apply_from_history(logits.clone(), row_slot, row_last_pos, torch.tensor(hist, dtype=dtype),
                                         slot_variant, slot_strength, row_scale=row_scale)
        assert torch.equal(via_hist.view(torch.int32), via_ctx.view(torch.int32))
    for row in (2, 3, 5, 6, 7):  # unsteered slot, zero strength, zero scale, out-of-range slots
        assert torch.equal(via_ctx[row].view(torch.int32), logits[row].view(torch.int32))
    assert orders_hit(ts.tables, variant, ctx) == {1, 2, 3} and mask[8].any()  # row 8: no history, unigram only


def test_multiword_keys_and_row_scale():
    """Order 6 with a wide vocabulary: keys span two 64-bit words (token ids beyond the tokenizer too)."""
    rng = np.random.default_rng(5)
    docs = [(d.astype(np.int64) * 997) % 70_000 for d in random_docs(rng, 40, 25, max_len=30)]
    from vllm_ngram_style.pack import StylePack, default_weights
    from vllm_ngram_style.train import count_token_documents

    counter, tables = count_token_documents(docs, 70_000, 6, 3)
    pack = StylePack(tables, counter.unigram_counts, 70_000, "fp", 1e-3, 3, default_weights(6), {}, "wide")
    variants = [compile_style(pack, "exact")]
    # Two home slots per order: lookups walk past keys equal to theirs in word 0 but not in word 1.
    ts, ref = TritonSteering(variants, "cpu", block=16, probe=32, max_home_range=2), ReferenceSteering(variants)
    assert ts.tables.constexprs()["MAXW"] >= 2
    assert ts.tables.layout.tokens_in_word0 < 5  # the two oldest tokens of an order-6 key live in word 1
    rows = 6
    ctx = contexts(rng, docs, rows, 5, short=0.3, foreign=0.0, vocab=70_000)
    # Rows 4, 5: a stored order-6 context with its oldest token changed (so it is absent) -- only word 1 differs.
    stored = {tuple(c) for c in variants[0].orders[5].context_tokens.tolist()}
    for r, c in zip((4, 5), variants[0].orders[5].context_tokens[:2].tolist()):
        c[0] = next(t for t in range(70_000) if tuple([t] + c[1:]) not in stored and t != c[0])
        ctx[r] = torch.tensor(c)
    variant = torch.zeros(rows, dtype=torch.int64)
    strength = torch.tensor(rng.uniform(0.3, 1.0, rows), dtype=torch.float32)
    row_scale = torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0, 0.75])
    got, _ = check(ts, ref, torch.randn(rows, 70_003), variant, strength, ctx, row_scale)
    assert 6 in orders_hit(ts.tables, variant, ctx)


def test_bytes_per_entry_at_don_quixote_shape():
    """Table size per stored entry for tables shaped like Don Quixote's (at 1/8 scale; the ratio is what counts)."""
    contexts_ = tuple(max(1, c // 8) for c in DON_QUIXOTE["contexts"])
    entries_ = (512,) + tuple(e // 8 for e in DON_QUIXOTE["entries"][1:])
    tables = gt.build_tables([synth_style(0, 49_152, contexts_, entries_)], None)
    assert tables.num_entries == sum(entries_)
    assert tables.table_bytes == tables.host_blob.size * 8
    assert tables.bytes_per_entry <= 12.0, tables.summary()


def test_bad_inputs_raise():
    rng = np.random.default_rng(6)
    pack, _ = random_pack(rng, 20, 2, top_k=3)
    style = compile_style(pack, "exact")
    o = style.orders[1]
    dup = CompiledOrder(2, np.concatenate([o.context_tokens, o.context_tokens[:1]]),
                        np.append(o.offsets, o.offsets[-1] + 1), np.append(o.tokens, 1), np.append(o.deltas, 0.5))
    with pytest.raises(StylePackError, match="same context twice"):
        gt.build_tables([CompiledStyle("d", "exact", [style.orders[0], dup])])
    bad = CompiledOrder(2, o.context_tokens, o.offsets, o.tokens, np.where(np.arange(o.deltas.size) == 0, np.nan, o.deltas))
    with pytest.raises(StylePackError, match="not finite"):
        gt.build_tables([CompiledStyle("n", "exact", [style.orders[0], bad])])
    ts = TritonSteering([style], "cpu", **SMALL)
    logits = torch.zeros(3, 20)
    with pytest.raises(ValueError, match="variant and strength"):
        ts.apply(logits, torch.zeros(2, dtype=torch.int64), torch.ones(3), torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="context"):
        ts.apply(logits, torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.zeros(3, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="row_scale"):
        ts.apply(logits, torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.zeros(3, 1, dtype=torch.int64),
                 row_scale=torch.ones(2))
    with pytest.raises(ValueError, match="slot_variant"):
        ts.apply_from_history(logits, torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                              torch.zeros(4, 5, dtype=torch.int32), torch.zeros(3, dtype=torch.int32), torch.ones(4))
    empty = torch.zeros(0, 20)  # no rows: nothing to launch
    assert ts.apply(empty, torch.zeros(0, dtype=torch.int64), torch.ones(0), torch.zeros(0, 1, dtype=torch.int64)) is empty


_ORDER_INDEPENDENT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton, triton.language  # imported before the kernel, without the interpreter (as vLLM does)
os.environ["TRITON_INTERPRET"] = "1"  # too late for triton.language: the kernel must cope anyway
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from helpers import random_pack
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.kernels.launcher import TritonSteering
pack, _ = random_pack(np.random.default_rng(7), 20, 3, top_k=4)
variants = [compile_style(pack, "exact")]
logits = torch.randn(3, 20)
v, s, c = torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.tensor([[1, 2], [-1, 3], [4, 4]])
got = TritonSteering(variants, "cpu", block=16).apply(logits.clone(), v, s, c)
torch.testing.assert_close(got, ReferenceSteering(variants).apply(logits.clone(), v, s, c), atol=2e-5, rtol=1e-5)
print("order-independent OK")
"""


def test_cpu_path_independent_of_import_order():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", _ORDER_INDEPENDENT, os.path.join(REPO, "tests")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "order-independent OK" in out.stdout, out.stderr[-3000:]


def test_benchmark_cpu_smoke():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "kernel_bench.py"), "--cpu-smoke"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "correctness: PASS" in out.stdout and "| B |" in out.stdout


def test_duplicate_context_check_matches_numpy_unique():
    """The GIL-friendly duplicate check (lexsort) against np.unique(axis=0), on random keys with and
    without repeated rows, one and two words wide."""
    from vllm_ngram_style.kernels.table_groups import has_duplicate_rows as _has_duplicate_rows

    rng = np.random.default_rng(7)
    for w in (1, 2, 3):
        for trial in range(20):
            keys = rng.integers(0, 6 if trial % 2 else 1 << 40, (int(rng.integers(0, 40)), w))  # [C, W]
            assert _has_duplicate_rows(keys) == (np.unique(keys, axis=0).shape[0] != keys.shape[0]), (w, keys)
