"""The torch reference op against the formulas written naively (float64)."""
import numpy as np
import pytest
import torch

from helpers import NaiveModel, random_pack
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.kernels.reference import ReferenceSteering


def random_histories(rng, docs, rows, max_order, vocab):
    """Mix of corpus-drawn contexts (matched), random ones (mostly unmatched) and short ones."""
    hist = []
    for r in range(rows):
        kind = r % 4
        if kind == 0:
            d = docs[rng.integers(len(docs))]
            end = int(rng.integers(1, len(d) + 1))
            h = [int(x) for x in d[max(0, end - (max_order - 1)):end]]
        elif kind == 1:
            h = [int(x) for x in rng.integers(0, vocab, size=max_order - 1)]
        elif kind == 2:
            h = [int(x) for x in rng.integers(0, vocab, size=int(rng.integers(0, max(max_order - 1, 1))))]
        else:
            d = docs[rng.integers(len(docs))]
            h = [int(x) for x in d[:1]]
        hist.append(h)
    return hist


def context_tensor(hist, max_order):
    ctx = torch.full((len(hist), max_order - 1), -1, dtype=torch.int64)
    for r, h in enumerate(hist):
        h = h[max(0, len(h) - (max_order - 1)):] if max_order > 1 else []
        if h:
            ctx[r, ctx.shape[1] - len(h):] = torch.tensor(h)
    return ctx


@pytest.mark.parametrize("seed,vocab,orders,top_k,extra_width", [
    (0, 11, 3, 4, 0), (1, 50, 3, 8, 5), (2, 300, 2, 512, 0), (3, 97, 4, 3, 1), (4, 40, 1, 5, 0), (5, 60, 6, 16, 2)])
def test_exact_mode_equals_dense_formula(seed, vocab, orders, top_k, extra_width):
    rng = np.random.default_rng(seed)
    pack, docs = random_pack(rng, vocab, orders, top_k, k=1e-3)
    naive = NaiveModel(docs, orders, top_k)
    rows = 24
    hist = random_histories(rng, docs, rows, orders, vocab)
    width = vocab + extra_width  # model logits may be wider than the tokenizer
    z = torch.tensor(rng.normal(size=(rows, width)) * 3, dtype=torch.float64)
    lam = torch.tensor(rng.uniform(0, 1, size=rows), dtype=torch.float64)
    lam[::5] = 1.0
    steering = ReferenceSteering([compile_style(pack, "exact")])
    got = z.clone()
    steering.apply(got, torch.zeros(rows, dtype=torch.int64), lam, context_tensor(hist, orders))

    want = z.clone().numpy()
    for r, h in enumerate(hist):
        for n in range(1, orders + 1):
            ctx = naive.matched(n, h)
            if ctx is None:
                continue
            for t in range(width):  # dense: every token, straight from the smoothing formula
                want[r, t] += lam[r].item() * pack.weights[n - 1] * naive.log_prob(n, ctx, min(t, vocab), 1e-3, vocab) \
                    if t < vocab else lam[r].item() * pack.weights[n - 1] * np.log(1e-3 / (sum(naive.full[(n, ctx)].values()) + 1e-3 * vocab))
    torch.testing.assert_close(torch.softmax(got, -1), torch.softmax(torch.tensor(want), -1), atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed,vocab,orders,top_k", [(0, 20, 3, 4), (1, 200, 3, 512), (2, 64, 5, 6)])
def test_paper_mode_equals_naive_sparse_update(seed, vocab, orders, top_k):
    rng = np.random.default_rng(seed)
    pack, docs = random_pack(rng, vocab, orders, top_k)
    naive = NaiveModel(docs, orders, top_k)
    rows = 20
    hist = random_histories(rng, docs, rows, orders, vocab)
    z = torch.tensor(rng.normal(size=(rows, vocab)), dtype=torch.float64)
    lam = torch.tensor(rng.uniform(0.1, 1, size=rows), dtype=torch.float64)
    steering = ReferenceSteering([compile_style(pack, "paper")])
    got = z.clone()
    steering.apply(got, torch.zeros(rows, dtype=torch.int64), lam, context_tensor(hist, orders))
    want = z.clone().numpy()
    for r, h in enumerate(hist):
        for n in range(1, orders + 1):
            ctx = naive.matched(n, h)
            if ctx is None:
                continue
            for t in naive.kept[(n, ctx)]:  # the paper: only tokens in the truncated table
                want[r, t] += lam[r].item() * pack.weights[n - 1] * naive.log_prob(n, ctx, t, pack.smoothing_k, vocab)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_mixed_variants_and_unsteered_rows_bit_identical():
    rng = np.random.default_rng(7)
    pack_a, docs_a = random_pack(rng, 80, 3, 8, name="a")
    pack_b, docs_b = random_pack(rng, 80, 3, 8, name="b")
    variants = [compile_style(pack_a, "exact"), compile_style(pack_b, "exact"), compile_style(pack_a, "paper")]
    rows = 30
    hist = random_histories(rng, docs_a + docs_b, rows, 3, 80)
    ctx = context_tensor(hist, 3)
    z = torch.randn(rows, 90, dtype=torch.float32)
    variant = torch.tensor(rng.integers(-1, 3, size=rows), dtype=torch.int64)
    lam = torch.tensor(rng.uniform(0, 1, size=rows), dtype=torch.float32)
    lam[3] = 0.0
    out = z.clone()
    ReferenceSteering(variants).apply(out, variant, lam, ctx)
    untouched = (variant < 0) | (lam == 0)
    assert torch.equal(out[untouched].view(torch.int32), z[untouched].view(torch.int32))
    for r in range(rows):  # each row equals a solo op with only its variant
        if untouched[r]:
            continue
        solo = z[r:r + 1].clone()
        ReferenceSteering([variants[variant[r]]]).apply(solo, torch.zeros(1, dtype=torch.int64), lam[r:r + 1], ctx[r:r + 1])
        torch.testing.assert_close(out[r:r + 1], solo, rtol=0, atol=1e-5)
    assert (out[~untouched] != z[~untouched]).any()


def test_empty_and_unmatched():
    rng = np.random.default_rng(9)
    pack, _ = random_pack(rng, 30, 3, 4)
    steering = ReferenceSteering([compile_style(pack, "exact")])
    z = torch.zeros(0, 30)
    steering.apply(z, torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, 2, dtype=torch.int64))
    # a history of tokens never seen: only the unigram order applies
    z = torch.zeros(1, 30)
    steering.apply(z, torch.zeros(1, dtype=torch.int64), torch.ones(1), torch.tensor([[35, 35]]))  # ids no corpus holds
    assert (z > 0).sum() == 4  # top_k unigrams


def _dense_exact(pack, naive, hist_row, width, vocab):
    """[width] float64: sum_n w_n log P_n(t | c_n) for every token (the dense formula)."""
    out = np.zeros(width)
    for n in range(1, pack.orders + 1):
        ctx = naive.matched(n, hist_row)
        if ctx is None:
            continue
        total = sum(naive.full[(n, ctx)].values())
        for t in range(width):
            lp = naive.log_prob(n, ctx, t, 1e-3, vocab) if t < vocab else np.log(1e-3 / (total + 1e-3 * vocab))
            out[t] += pack.weights[n - 1] * lp
    return out


def test_blend_columns_equal_the_sum_of_single_style_dense_edits():
    """A row with K (variant, strength) columns gets sum_k strength_k D_k: checked against the dense
    float64 formula of each style (softmax-equal), with -1 and 0-strength columns adding nothing."""
    rng = np.random.default_rng(11)
    vocab, width, rows, k = 60, 63, 16, 4
    packs, models, all_docs = [], [], []
    for i in range(3):
        p, d = random_pack(rng, vocab, 3, 6, name=f"s{i}")
        packs.append(p)
        models.append(NaiveModel(d, 3, 6))
        all_docs += d
    steering = ReferenceSteering([compile_style(p, "exact") for p in packs])
    hist = random_histories(rng, all_docs, rows, 3, vocab)
    variant = torch.tensor(rng.integers(-1, 3, size=(rows, k)), dtype=torch.int64)  # [R, K]
    strength = torch.tensor(rng.uniform(0, 1.5, size=(rows, k)), dtype=torch.float64)  # [R, K]
    strength[::3, 1] = 0.0
    variant[5] = -1  # a row with no active column
    scale = torch.tensor(rng.uniform(0.2, 1, size=rows), dtype=torch.float64)  # [R] row_scale
    z = torch.tensor(rng.normal(size=(rows, width)) * 2, dtype=torch.float64)
    got = steering.apply(z.clone(), variant, strength, context_tensor(hist, 3), row_scale=scale)
    assert torch.equal(got[5], z[5])
    want = z.clone().numpy()
    for r in range(rows):
        for j in range(k):
            v = int(variant[r, j])
            if v >= 0 and strength[r, j] != 0:
                want[r] += float(scale[r] * strength[r, j]) * _dense_exact(packs[v], models[v], hist[r], width, vocab)
    torch.testing.assert_close(torch.softmax(got, -1), torch.softmax(torch.tensor(want), -1), atol=1e-9, rtol=0)


def test_history_form_equals_row_form():
    """apply_from_history reads each row's context from a token history [S, L] at its newest
    position: the same edit as the row form with that context; bad slots and positions are missing."""
    rng = np.random.default_rng(12)
    pack, docs = random_pack(rng, 50, 3, 8)
    steering = ReferenceSteering([compile_style(pack, "exact"), compile_style(pack, "paper")])
    s, length, rows = 6, 12, 10
    ids = torch.tensor(rng.integers(0, 50, size=(s, length)), dtype=torch.int32)  # [S, L]
    row_slot = torch.tensor([0, 1, 2, 3, 4, 5, 0, 7, -1, 2], dtype=torch.int32)  # 7 and -1: no such slot
    pos = torch.tensor([11, 0, 5, 1, 30, -1, 3, 4, 4, 1], dtype=torch.int64)  # 30: past L; -1: nothing known
    slot_variant = torch.tensor([0, 1, 0, -1, 1, 0], dtype=torch.int32)
    slot_strength = torch.tensor([0.5, 1.0, 0.3, 0.7, 0.2, 0.9], dtype=torch.float32)
    z = torch.randn(rows, 50)
    got = steering.apply_from_history(z.clone(), row_slot, pos, ids, slot_variant, slot_strength)
    ctx = torch.full((rows, 2), -1, dtype=torch.int64)
    variant = torch.full((rows,), -1, dtype=torch.int64)
    strength = torch.zeros(rows)
    for r in range(rows):
        sl, p = int(row_slot[r]), int(pos[r])
        if not 0 <= sl < s:
            continue
        variant[r], strength[r] = int(slot_variant[sl]), float(slot_strength[sl])
        for age in range(2):
            if 0 <= p - age < length:
                ctx[r, 1 - age] = int(ids[sl, p - age])
    want = steering.apply(z.clone(), variant, strength, ctx)
    assert torch.equal(got, want)
    assert torch.equal(got[[3, 7, 8]], z[[3, 7, 8]])
