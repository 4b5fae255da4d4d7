"""The compiled CPU op (kernels/cpu_kernel.py) against the torch reference op and the dense float64 formula.

Exactness: the tables store each delta as float32. Against a reference op built from the same
styles with their deltas rounded to float32 (``rounded``), the CPU op must be BIT-IDENTICAL for
float32 and float64 logits: it adds float32(strength x delta) in the reference's accumulation order.
Against the reference on the original float64 deltas: 2e-5 absolute + 1e-5 relative. Positions the
reference does not touch, and rows with no active column, are bit-identical to the input.
16-bit logits: within one rounding of the format (relative 2^-7 for bfloat16, 2^-10 for float16).
Dense formula: the op's log-softmax equals the float64 log-softmax of z + lambda sum_n w_n log P_n
within 1e-4. Entropy: normalised_entropy equals adaptive.adaptive_scale within 1e-5 absolute
(both are float32 computations; the torch one with a full softmax).
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import NaiveModel, random_docs, random_pack
from vllm_ngram_style import kernels
from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.contract import CompiledOrder, CompiledStyle
from vllm_ngram_style.errors import ConfigError, NgramStyleError
from vllm_ngram_style.kernels import cpu_kernel
from vllm_ngram_style.kernels import gpu_tables as gt
from vllm_ngram_style.kernels.cpu_kernel import PARALLEL_MIN_ROWS, CpuSteering, resolve_threads
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.modes import compile_style

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rounded(style: CompiledStyle) -> CompiledStyle:
    """The same style with float32-rounded deltas: exactly what the flat tables store."""
    return CompiledStyle(style.name, style.mode, [
        CompiledOrder(o.order, o.context_tokens, o.offsets, o.tokens, o.deltas.astype(np.float32).astype(np.float64))
        for o in style.orders])


def bits(t):
    """The raw bits of a float tensor (bit-for-bit comparisons that also see NaN payloads and -0.0)."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16))


class Ops:
    """The CPU op and its two yardsticks over the same variants."""

    def __init__(self, variants, **kw):
        self.cpu = CpuSteering(variants, **kw)
        self.ref32 = ReferenceSteering([rounded(v) for v in variants])
        self.ref = ReferenceSteering(variants)

    def check(self, logits, variant, strength, ctx, row_scale=None, **kw):
        """CPU op == reference on float32 deltas bit for bit, ~= reference; untouched positions identical."""
        got = self.cpu.apply(logits.clone(), variant, strength, ctx, row_scale=row_scale)
        exact = self.ref32.apply(logits.clone(), variant, strength, ctx, row_scale=row_scale)
        assert torch.equal(bits(got), bits(exact))
        approx = self.ref.apply(logits.clone(), variant, strength, ctx, row_scale=row_scale)
        torch.testing.assert_close(got, approx, atol=2e-5, rtol=1e-5, equal_nan=True)
        eff = strength if row_scale is None else strength * (row_scale if strength.dim() == 1 else row_scale[:, None])
        mask = touched(self.ref, logits, variant, eff, ctx)
        assert torch.equal(bits(got)[~mask], bits(logits)[~mask])
        return got, mask


def touched(ref, logits, variant, strength, ctx):
    rows, toks, _ = ref.entries(variant, strength, ctx)
    keep = toks < logits.shape[1]
    mask = torch.zeros(logits.shape, dtype=torch.bool)
    mask[rows[keep], toks[keep]] = True
    return mask


def contexts(rng, docs, rows, m, short=0.25, foreign=0.2, vocab=50):
    """[rows, m] right-aligned contexts, -1 padded: mostly real histories (every order can match), some
    short ones, some with a random or out-of-vocabulary token (10**6, 2**31 - 1)."""
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


def orders_hit(tables, variant, ctx):
    """Orders matched by any (row, column), by the host mirror of the lookups."""
    v = variant if variant.dim() == 2 else variant[:, None]
    return {n for vs, c in zip(v.tolist(), ctx.tolist()) for x in vs for n, _, _ in gt.lookup_host(tables, x, c)}


@pytest.fixture(scope="module")
def mixed():
    """Five variants of orders 3, 4 and 6 (exact and paper), their docs, and their ops."""
    rng = np.random.default_rng(0)
    p3, d3 = random_pack(rng, 40, 3, top_k=40)  # long contexts
    p4, d4 = random_pack(rng, 90, 4, top_k=4)
    p6, d6 = random_pack(rng, 60, 6, top_k=5)
    variants = [compile_style(p3, "exact"), compile_style(p3, "paper"), compile_style(p4, "exact"),
                compile_style(p6, "exact"), compile_style(p6, "paper")]
    return Ops(variants), [d3, d3, d4, d6, d6]


def mixed_rows(rng, docs, rows, m, vocab=90):
    variant = torch.tensor(rng.integers(-1, 6, size=rows))  # 5 = num_variants: out of range, unsteered
    variant[::9] = -7
    ctx = torch.cat([contexts(rng, docs[max(int(v), 0) % 5], 1, m, vocab=vocab) for v in variant])
    return variant, ctx


def test_bit_identical_to_reference_over_orders_1_to_6(mixed):
    ops, docs = mixed
    rng = np.random.default_rng(1)
    r, v = 60, 37  # V not a multiple of anything; token ids 37..89 of the tables lie beyond the logits
    variant, ctx = mixed_rows(rng, docs, r, 5)
    strength = torch.tensor(rng.uniform(0.1, 1.5, r), dtype=torch.float32)
    strength[4] = 0.0
    logits = torch.randn(r, v) * 2
    logits[variant < 0, :5] = torch.tensor([float("nan"), float("-inf"), -0.0, float("inf"), 1e-40])
    logits[4, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])  # strength 0: never written
    logits[1, 7] = float("-inf")
    got, mask = ops.check(logits, variant, strength, ctx)
    assert orders_hit(ops.cpu.tables, variant, ctx) == {1, 2, 3, 4, 5, 6}
    _, toks, _ = ops.ref.entries(variant, strength, ctx)
    assert (toks >= v).any() and mask.sum() > 300
    for row in [4] + torch.nonzero((variant < 0) | (variant >= 5)).flatten().tolist():
        assert torch.equal(got[row].view(torch.int32), logits[row].view(torch.int32))
    # int32 ids and contexts, a wider context (only its last max_order-1 columns are read), row_scale
    wide = torch.cat([torch.full((r, 2), 5, dtype=torch.int64), ctx], 1)
    same = ops.cpu.apply(logits.clone(), variant.to(torch.int32), strength, wide.to(torch.int32))
    assert torch.equal(same.view(torch.int32), got.view(torch.int32))
    scale = torch.tensor(rng.uniform(0.0, 1.0, r), dtype=torch.float32)
    scale[::5] = 0.0
    ops.check(logits, variant, strength, ctx, row_scale=scale)
    # float64 logits and strengths: the same arithmetic in float64, still bit-identical
    ops.check(logits.double(), variant, strength.double(), ctx, row_scale=scale.double())


def test_blend_columns(mixed):
    """[R, K] columns: row r gets sum_k strength[r, k] D_{variant[r, k]}; -1, out-of-range and 0-strength
    columns add nothing; a row with no active column is never written."""
    ops, docs = mixed
    rng = np.random.default_rng(2)
    r, k, v = 30, 4, 61
    variant = torch.tensor(rng.integers(-1, 6, size=(r, k)))  # [R, K]
    variant[3] = torch.tensor([-1, 5, -1, 99])  # nothing active
    strength = torch.tensor(rng.uniform(0.1, 1.2, size=(r, k)), dtype=torch.float32)
    strength[::4, 1] = 0.0
    strength[7] = 0.0
    ctx = contexts(rng, docs[0] + docs[2] + docs[3], r, 5, vocab=90)
    logits = torch.randn(r, v)
    scale = torch.tensor(rng.uniform(0.2, 1.0, r), dtype=torch.float32)
    got, _ = ops.check(logits, variant, strength, ctx, row_scale=scale)
    for row in (3, 7):
        assert torch.equal(got[row].view(torch.int32), logits[row].view(torch.int32))
    assert orders_hit(ops.cpu.tables, variant, ctx) == {1, 2, 3, 4, 5, 6}
    one = ops.cpu.apply(logits.clone(), variant[:, :1].clone(), strength[:, :1].clone(), ctx)
    torch.testing.assert_close(one, ops.cpu.apply(logits.clone(), variant[:, 0].clone(), strength[:, 0].clone(), ctx),
                               atol=0, rtol=0)  # [R, 1] and [R] are the same call


def test_exact_mode_equals_dense_formula():
    """softmax(z + lambda sum_n w_n log P_n(. | c_n)) over ALL tokens, counts from Counters over the documents,
    for orders 1-4, also as a two-style blend; top_k >= V, so no continuation is truncated."""
    rng = np.random.default_rng(3)
    vocab, k, rows = 30, 1e-3, 12
    packs = [random_pack(rng, vocab, 4, top_k=vocab) for _ in range(2)]
    naive = [NaiveModel(d, 4, top_k=vocab) for _, d in packs]
    op = CpuSteering([compile_style(p, "exact") for p, _ in packs])
    ctx = contexts(rng, packs[0][1] + packs[1][1], rows, 3, foreign=0.1, vocab=vocab)
    variant = torch.tensor([[0, 1]] * rows)
    strength = torch.tensor(rng.uniform(0.05, 1.0, (rows, 2)), dtype=torch.float32)
    strength[::3, 1] = 0.0
    logits = torch.randn(rows, vocab) * 3
    got = op.apply(logits.clone(), variant, strength, ctx)
    worst, matched = 0.0, set()
    for r in range(rows):
        hist = [t for t in ctx[r].tolist() if t >= 0]
        z = logits[r].double().clone()
        for j, ((pack, _), model) in enumerate(zip(packs, naive)):
            for n in range(1, 5):
                c = model.matched(n, hist)
                if c is None or strength[r, j] == 0:
                    continue
                matched.add(n)
                lp = torch.tensor([model.log_prob(n, c, t, k, vocab) for t in range(vocab)], dtype=torch.float64)
                z += float(strength[r, j]) * pack.weights[n - 1] * lp
        worst = max(worst, float((torch.log_softmax(got[r].double(), 0) - torch.log_softmax(z, 0)).abs().max()))
    assert matched == {1, 2, 3, 4} and worst < 1e-4


@pytest.mark.parametrize("home_range, probe", [(None, 1), (2, 16)])
def test_collisions_and_long_probe_chains(home_range, probe):
    """A nearly full table probed one slot at a time; with home_range=2 every key of an order shares one of two
    homes, so a lookup walks past keys that differ from it in one field (variant or one token)."""
    rng = np.random.default_rng(4)
    pack, docs = random_pack(rng, 12, 3, top_k=3, n_docs=120)
    ops = Ops([compile_style(pack, "exact"), compile_style(pack, "paper")], probe=probe, load_factor=0.95,
              max_home_range=home_range)
    assert max(ops.cpu.tables.max_displacement) >= (3 if home_range is None else 20)
    rows = 40
    ctx = contexts(rng, docs, rows, 2, foreign=0.0)
    ctx[rows // 2:] = torch.tensor(rng.integers(0, 12, size=(rows - rows // 2, 2)))  # many absent pairs
    variant = torch.tensor(rng.integers(0, 2, size=rows))
    ops.check(torch.randn(rows, 12), variant, torch.ones(rows), ctx)
    assert orders_hit(ops.cpu.tables, variant, ctx) == {1, 2, 3}


def test_multiword_keys_order_6_wide_vocabulary():
    """Order 6 over a 70k vocabulary: keys span two 64-bit words; rows whose stored context differs from a
    stored one only in its oldest token (word 1) must not match."""
    rng = np.random.default_rng(5)
    docs = [(d.astype(np.int64) * 997) % 70_000 for d in random_docs(rng, 40, 25, max_len=30)]
    from vllm_ngram_style.pack import StylePack, default_weights
    from vllm_ngram_style.train import count_token_documents

    counter, tables = count_token_documents(docs, 70_000, 6, 3)
    pack = StylePack(tables, counter.unigram_counts, 70_000, "fp", 1e-3, 3, default_weights(6), {}, "wide")
    style = compile_style(pack, "exact")
    ops = Ops([style], probe=32, max_home_range=2)
    assert ops.cpu.tables.constexprs()["MAXW"] >= 2 and ops.cpu.tables.layout.tokens_in_word0 < 5
    rows = 8
    ctx = contexts(rng, docs, rows, 5, short=0.3, foreign=0.0, vocab=70_000)
    stored = {tuple(c) for c in style.orders[5].context_tokens.tolist()}
    for r, c in zip((6, 7), style.orders[5].context_tokens[:2].tolist()):
        c[0] = next(t for t in range(70_000) if tuple([t] + c[1:]) not in stored and t != c[0])
        ctx[r] = torch.tensor(c)
    variant = torch.zeros(rows, dtype=torch.int64)
    strength = torch.tensor(rng.uniform(0.3, 1.0, rows), dtype=torch.float32)
    ops.check(torch.randn(rows, 70_003), variant, strength, ctx, row_scale=torch.tensor([1, .5, 0, .25, 1, .75, 1, 1]))
    assert 6 in orders_hit(ops.cpu.tables, variant, ctx)
    assert 6 not in orders_hit(ops.cpu.tables, variant[6:], ctx[6:])


def test_history_form_equals_row_form(mixed):
    """Contexts read from a token history [S, L] through row -> slot, per-slot [S] or [S, K] columns; slots
    outside [0, S) unsteered; positions outside [0, L) and negative stored tokens (vLLM's garbage past a
    request's length) missing."""
    ops, docs = mixed
    rng = np.random.default_rng(6)
    s_slots, length, rows, v, m = 8, 11, 14, 45, 5
    hist = np.full((s_slots, length), -7, dtype=np.int64)
    for s in range(s_slots):
        d = np.concatenate(random_docs(rng, 3, 40) + [docs[s % 5][s]])[-length:]
        hist[s, :d.shape[0]] = d
    slot_variant = torch.tensor(rng.integers(-1, 6, size=(s_slots, 2)), dtype=torch.int32)  # [S, K]
    slot_strength = torch.tensor(rng.uniform(0.2, 1.2, size=(s_slots, 2)), dtype=torch.float32)
    slot_strength[3] = 0.0
    row_slot = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -1, 8, 10 ** 9, 0, 1, 2])  # -1, S, 10**9: no such slot
    row_last_pos = torch.tensor([10, 10, 5, 4, 0, 1, 30, -1, 3, 4, 4, 2, 7, 10 ** 12])  # 30, 10**12: past L
    row_scale = torch.tensor(rng.uniform(0.2, 1.0, rows), dtype=torch.float32)
    ctx = torch.full((rows, m), -1, dtype=torch.int64)
    variant = torch.full((rows, 2), -1, dtype=torch.int64)
    strength = torch.zeros(rows, 2)
    for r in range(rows):  # the same rows in the row form, gathered in Python
        s, p = int(row_slot[r]), int(row_last_pos[r])
        if not 0 <= s < s_slots:
            continue
        variant[r], strength[r] = slot_variant[s].long(), slot_strength[s]
        for age in range(m):
            if 0 <= p - age < length and hist[s, p - age] >= 0:
                ctx[r, m - 1 - age] = int(hist[s, p - age])
    logits = torch.randn(rows, v)
    via_ctx, mask = ops.check(logits, variant, strength, ctx, row_scale)
    for dtype in (torch.int32, torch.int64):
        for cols in (slice(None), 0):  # [S, K] and [S] per-slot columns
            via_hist = ops.cpu.apply_from_history(logits.clone(), row_slot, row_last_pos, torch.tensor(hist, dtype=dtype),
                                                  slot_variant[:, cols], slot_strength[:, cols], row_scale=row_scale)
            want = via_ctx if cols != 0 else ops.cpu.apply(logits.clone(), variant[:, 0], strength[:, 0], ctx, row_scale)
            assert torch.equal(via_hist.view(torch.int32), want.view(torch.int32))
    ref_hist = ops.ref32.apply_from_history(logits.clone(), row_slot, row_last_pos, torch.tensor(hist), slot_variant,
                                            slot_strength, row_scale=row_scale)
    assert torch.equal(ref_hist.view(torch.int32), via_ctx.view(torch.int32))
    for row in (3, 8, 9, 10):  # zero strength, out-of-range slots
        assert torch.equal(via_ctx[row].view(torch.int32), logits[row].view(torch.int32))
    assert mask[7].any()  # position -1: no context at all, order 1 still applies


def test_strided_rows_and_16_bit_logits(mixed):
    ops, docs = mixed
    rng = np.random.default_rng(7)
    r, v = 20, 50
    variant, ctx = mixed_rows(rng, docs, r, 5)
    strength = torch.tensor(rng.uniform(0.1, 1.5, r), dtype=torch.float32)
    logits = torch.randn(r, v) * 3
    want = ops.cpu.apply(logits.clone(), variant, strength, ctx)
    parent = torch.randn(r, v + 13)
    view = parent[:, 5:5 + v]  # rows 63 apart, storage offset 5
    view.copy_(logits)
    before = parent.clone()
    ops.cpu.apply(view, variant, strength, ctx)
    assert torch.equal(view.view(torch.int32), want.view(torch.int32))
    outside = torch.ones_like(parent, dtype=torch.bool)
    outside[:, 5:5 + v] = False
    assert torch.equal(parent[outside].view(torch.int32), before[outside].view(torch.int32))
    exact64 = ops.ref32.apply(logits.double(), variant, strength.double(), ctx)  # the same edit in float64
    torch.testing.assert_close(want.double(), exact64, atol=2e-5, rtol=1e-5)
    untouched = exact64 == logits.double()
    for dtype, ulp in ((torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -10)):
        low = logits.to(dtype)
        got = ops.cpu.apply(low.clone(), variant, strength, ctx)
        expect = ops.ref32.apply(low.double(), variant, strength.double(), ctx)
        # one rounding to the format per order added (<= 3 half-ulps), magnitudes at most max(|z|, |result|)
        bound = 1.5 * ulp * torch.maximum(low.double().abs(), expect.abs()) + 1e-6
        assert ((got.double() - expect).abs() <= bound).all()
        assert torch.equal(got.view(torch.int16)[untouched], low.view(torch.int16)[untouched])


def test_unigram_only_empty_tables_and_no_rows():
    rng = np.random.default_rng(8)
    uni = Ops([compile_style(random_pack(rng, 40, 1, top_k=6)[0], "exact")])
    assert uni.cpu.max_order == 1 and uni.cpu.context_len == 0
    uni.check(torch.randn(5, 40), torch.tensor([0, -1, 0, 1, 0]), torch.tensor([1.0, 1.0, 0.5, 1.0, 0.0]),
              torch.zeros(5, 0, dtype=torch.int64))

    def order(n, ctx, offsets, tokens, deltas):
        return CompiledOrder(n, np.asarray(ctx, np.int64).reshape(len(offsets) - 1, n - 1), np.asarray(offsets, np.int64),
                             np.asarray(tokens, np.int64), np.asarray(deltas, np.float64))

    empty = CompiledStyle("empty", "exact", [order(1, [], [0, 0], [], []), order(2, [], [0], [], []),
                                             order(3, [[1, 2], [3, 4]], [0, 0, 0], [], [])])  # contexts, no entries
    unigram = CompiledStyle("uni", "exact", [order(1, [], [0, 3], [1, 5, 70], [0.5, 1.0, 2.0])])
    op = CpuSteering([empty, unigram])
    logits = torch.randn(4, 64)
    got = op.apply(logits.clone(), torch.tensor([0, 1, 0, 1]), torch.tensor([1.0, 2.0, 1.0, 0.5]),
                   torch.tensor([[1, 2], [1, 2], [-1, -1], [3, 4]]))
    expect = logits.clone()
    expect[1, [1, 5]] += torch.tensor([1.0, 2.0])  # token 70 >= V = 64: skipped
    expect[3, [1, 5]] += torch.tensor([0.25, 0.5])
    assert torch.equal(got, expect)
    nothing = CpuSteering([])  # no variants: every row is unsteered
    out = nothing.apply(logits.clone(), torch.tensor([0, -1, 0, 0]), torch.ones(4), torch.zeros(4, 0, dtype=torch.int64))
    assert torch.equal(out.view(torch.int32), logits.view(torch.int32))
    none = torch.zeros(0, 64)
    assert op.apply(none, torch.zeros(0, dtype=torch.int64), torch.ones(0), torch.zeros(0, 2, dtype=torch.int64)) is none
    assert op.apply_from_history(none, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                 torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.int32),
                                 torch.ones(2)) is none
    assert op.normalised_entropy(none).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_normalised_entropy_matches_torch_formula(dtype):
    rng = np.random.default_rng(9)
    op = CpuSteering([])
    for v in (1, 7, 1000, 1024, 49_157):
        rows = 9
        logits = torch.tensor(rng.normal(size=(rows, v)), dtype=torch.float32) * torch.tensor(
            [0.01, 0.3, 1, 3, 10, 30, 100, 3, 1])[:, None]
        logits[7, ::3] = float("-inf")  # masked tokens
        if v > 1:
            logits[8, 1:] = float("-inf")  # one finite logit: entropy 0
        logits = logits.to(dtype)
        got = op.normalised_entropy(logits)
        want = adaptive_scale(logits)
        assert got.dtype == torch.float32 and got.shape == (rows,)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, equal_nan=True)
        wide = torch.zeros(rows, v + 5, dtype=dtype)
        wide[:, 2:2 + v] = logits
        assert torch.equal(bits(op.normalised_entropy(wide[:, 2:2 + v])), bits(got))  # strided rows
    bad = torch.randn(4, 100)
    bad[0, 3], bad[1, 4], bad[2] = float("nan"), float("inf"), float("-inf")
    bad = bad.to(dtype)
    got, want = op.normalised_entropy(bad), adaptive_scale(bad)
    assert torch.isnan(got[:3]).all() and torch.isnan(want[:3]).all()
    torch.testing.assert_close(got[3], want[3], atol=1e-5, rtol=0)


def test_threads_split_rows_exactly(mixed, monkeypatch):
    """threads=2: rows split over numba's threads give the same bits as one thread (both forms, entropy)."""
    ops, docs = mixed
    rng = np.random.default_rng(10)
    two = CpuSteering(ops.ref.variants, threads=2)
    assert two.threads == 2
    r = PARALLEL_MIN_ROWS + 17
    variant, ctx = mixed_rows(rng, docs, r, 5)
    strength = torch.tensor(rng.uniform(0.1, 1.5, r), dtype=torch.float32)
    logits = torch.randn(r, 77)
    a = ops.cpu.apply(logits.clone(), variant, strength, ctx)
    b = two.apply(logits.clone(), variant, strength, ctx)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    hist = torch.tensor(rng.integers(0, 90, size=(r, 9)), dtype=torch.int32)
    slots, pos = torch.arange(r - 1, -1, -1), torch.tensor(rng.integers(-1, 10, size=r))
    args = (slots, pos, hist, variant.to(torch.int32), strength)
    a = ops.cpu.apply_from_history(logits.clone(), *args)
    b = two.apply_from_history(logits.clone(), *args)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert torch.equal(ops.cpu.normalised_entropy(logits), two.normalised_entropy(logits))
    monkeypatch.setenv(cpu_kernel.ENV_THREADS, "0")
    assert resolve_threads() >= 1
    monkeypatch.setenv(cpu_kernel.ENV_THREADS, "two")
    with pytest.raises(ConfigError, match="thread count"):
        resolve_threads()


def test_bad_inputs_raise_clear_errors(mixed):
    op = mixed[0].cpu
    logits = torch.zeros(3, 20)
    ids, ones, ctx = torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.zeros(3, 5, dtype=torch.int64)
    cases = [
        (dict(logits=logits, variant=ids[:2], strength=ones), "variant and strength"),
        (dict(logits=logits, variant=ids.float(), strength=ones), "variant must be int32 or int64"),
        (dict(logits=logits, variant=ids, strength=ones.half()), "strength must be float32 or float64"),
        (dict(logits=logits, context=ctx[:, :4]), "context must be"),
        (dict(logits=logits, row_scale=torch.ones(2)), "row_scale"),
        (dict(logits=torch.zeros(20, 3).t()), "contiguous"),
        (dict(logits=torch.zeros(1, 20).expand(3, 20)), "non-overlapping"),
        (dict(logits=torch.zeros(3, 20, dtype=torch.int32)), "float32, float64, bfloat16 or float16"),
        (dict(logits=torch.zeros(3)), r"\[R, V\]"),
    ]
    for kw, match in cases:
        call = dict(logits=logits, variant=ids, strength=ones, context=ctx, row_scale=None) | kw
        with pytest.raises(NgramStyleError, match=match):
            op.apply(call["logits"], call["variant"], call["strength"], call["context"], row_scale=call["row_scale"])
    with pytest.raises(NgramStyleError, match="slot_variant and slot_strength"):
        op.apply_from_history(logits, ids, ids, torch.zeros(4, 5, dtype=torch.int32), torch.zeros(3, dtype=torch.int32),
                              torch.ones(4))
    with pytest.raises(NgramStyleError, match="row_slot and row_last_pos"):
        op.apply_from_history(logits, ids[:2], ids, torch.zeros(4, 5, dtype=torch.int32), torch.zeros(4, dtype=torch.int32),
                              torch.ones(4))
    with pytest.raises(NgramStyleError, match="CPU tensors"):
        CpuSteering([], device="cuda")


def test_backend_selection_and_fallback(monkeypatch, caplog):
    rng = np.random.default_rng(11)
    variants = [compile_style(random_pack(rng, 20, 2, top_k=3)[0], "exact")]
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    assert kernels.resolve_backend(None, "cpu") == "cpu" and kernels.resolve_backend("reference", "cpu") == "reference"
    op = kernels.make_steering_op(variants, "cpu")
    assert isinstance(op, CpuSteering) and op.backend == "cpu" and op.warmup_seconds >= 0

    def broken(*a, **k):
        raise RuntimeError("numba failed to compile")

    monkeypatch.setattr(cpu_kernel, "CpuSteering", broken)
    with caplog.at_level(logging.WARNING, logger="vllm_ngram_style.kernels"):
        assert isinstance(kernels.make_steering_op(variants, "cpu"), ReferenceSteering)
    assert "compiled CPU op unavailable" in caplog.text
    monkeypatch.setenv(kernels.ENV_BACKEND, "cpu")
    with pytest.raises(RuntimeError, match="numba failed"):
        kernels.make_steering_op(variants, "cpu")


def test_benchmark_quick_smoke():
    """benchmarks/cpu_op_bench.py --quick: every op of the benchmark on a tiny synthetic pack, checked first."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "cpu_op_bench.py"), "--quick"],
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "correctness: PASS" in out.stdout and "| 16 | 4096 | 2 |" in out.stdout


def test_vllm_worker_module_scan_survives_numba():
    """vLLM's CPU worker start scans every module global with vars(x).get(...); llvmlite's lib wrapper
    broke it (vllm_ngram_style/numba_compat.py). Run vLLM's own scan in this process."""
    dispatcher = pytest.importorskip("vllm.triton_utils.dispatcher")
    import llvmlite.binding.ffi as ffi

    assert isinstance(vars(ffi.lib), dict)
    dispatcher._rebind_kernels([])
