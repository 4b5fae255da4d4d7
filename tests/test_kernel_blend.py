"""K-column style blends in the Triton kernel (interpreter) against the torch reference op and the
dense formula: row r gets row_scale[r] * sum_k strength[r, k] * sum_n D_{variant[r, k], n}(c_n(r), t),
inactive columns add nothing, rows with no active column are never written, one launch per call.

Tolerances as in test_kernel.py: 2e-5 absolute + 1e-5 relative against the reference; untouched
positions bit-identical; the dense formula's log-softmax within 1e-4.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from helpers import NaiveModel, random_pack
from test_kernel import SMALL, check, contexts, orders_hit
from vllm_ngram_style.kernels.launcher import TritonSteering
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.modes import compile_style


def _blend_case(rng):
    p3, d3 = random_pack(rng, 40, 3, top_k=20, name="a")
    p4, d4 = random_pack(rng, 40, 4, top_k=5, name="b")
    variants = [compile_style(p3, "exact"), compile_style(p3, "paper"), compile_style(p4, "exact")]
    return variants, d3 + d4


def test_blend_columns_match_reference_and_leave_inactive_rows_alone():
    rng = np.random.default_rng(11)
    variants, docs = _blend_case(rng)
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    r, k, v = 9, 3, 43  # K = 3 is padded to 4 lanes inside the kernel
    variant = torch.tensor(rng.integers(0, 3, size=(r, k)))
    variant[0] = torch.tensor([0, 2, 1])  # three styles blended in one row
    variant[1] = torch.tensor([2, -1, 7])  # a missing column and an id outside the table
    variant[2] = torch.tensor([-1, -1, -1])  # no active column: never written
    variant[3] = torch.tensor([1, 1, 1])  # one variant three times: adds up
    strength = torch.tensor(rng.uniform(0.1, 1.5, size=(r, k)), dtype=torch.float32)
    strength[4] = 0.0  # every column at strength 0: never written
    strength[5, 1] = 0.0
    row_scale = torch.tensor(rng.uniform(0.2, 1.0, r), dtype=torch.float32)
    row_scale[6] = 0.0  # scaled to nothing: never written
    ctx = contexts(rng, docs, r, 3)
    logits = torch.randn(r, v)
    got, mask = check(ts, ref, logits, variant, strength, ctx, row_scale)
    for row in (2, 4, 6):
        assert torch.equal(got[row].view(torch.int32), logits[row].view(torch.int32))
    assert orders_hit(ts.tables, variant[:, 0], ctx) >= {1, 2, 3} and mask[0].sum() > mask[1].sum() > 0
    # A blend is the sum of its columns applied one at a time (each a K=1 call).
    one_by_one = logits.clone()
    for j in range(k):
        ts.apply(one_by_one, variant[:, j].contiguous(), strength[:, j].contiguous(), ctx, row_scale=row_scale)
    torch.testing.assert_close(got, one_by_one, atol=2e-5, rtol=1e-5)


def test_blend_layouts_dtypes_and_one_launch():
    """int32 ids, non-contiguous columns (a transposed [K, R] tensor), K = 1 as [R, 1] and K = 4; one launch
    per call whatever K is; K = 5 and mismatched shapes raise."""
    rng = np.random.default_rng(12)
    variants, docs = _blend_case(rng)
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    launches = []
    real = ts._launch
    ts._launch = lambda r, kind, args, k: (launches.append((r, kind, k)), real(r, kind, args, k))
    r = 6
    ctx = contexts(rng, docs, r, 3)
    logits = torch.randn(r, 41)
    for k in (1, 4):
        variant_t = torch.tensor(rng.integers(-1, 3, size=(k, r)), dtype=torch.int32)  # [K, R]
        strength_t = torch.tensor(rng.uniform(0.2, 1.0, size=(k, r)), dtype=torch.float32)
        variant, strength = variant_t.t(), strength_t.t()  # [R, K] views, column stride R
        assert k == 1 or not variant.is_contiguous()
        check(ts, ref, logits, variant, strength, ctx)
    assert launches == [(r, "context", 1), (r, "context", 4)]
    with pytest.raises(ValueError, match="K <= 4"):
        ts.apply(logits, torch.zeros(r, 5, dtype=torch.int64), torch.ones(r, 5), ctx)
    with pytest.raises(ValueError, match="variant and strength"):
        ts.apply(logits, torch.zeros(r, 2, dtype=torch.int64), torch.ones(r), ctx)


def test_blend_from_history_matches_context_form():
    """slot_variant / slot_strength [S, K] read through row -> slot: bit-identical to the context form."""
    rng = np.random.default_rng(13)
    variants, docs = _blend_case(rng)
    ts = TritonSteering(variants, "cpu", **SMALL)
    s_slots, length, r, k = 5, 8, 7, 2
    hist = np.stack([np.resize(docs[i], length) for i in range(s_slots)]).astype(np.int32)  # [S, L]
    slot_variant = torch.tensor(rng.integers(-1, 3, size=(s_slots, k)), dtype=torch.int32)
    slot_variant[0] = torch.tensor([0, 2], dtype=torch.int32)
    slot_strength = torch.tensor(rng.uniform(0.2, 1.0, size=(s_slots, k)), dtype=torch.float32)
    row_slot = torch.tensor([0, 1, 2, 3, 4, 5, 0])  # 5 = S: out of range, unsteered
    row_pos = torch.tensor([7, 6, 1, 0, 7, 3, -1])  # short histories; -1: none (unigram only)
    m = ts.max_order - 1
    ctx = torch.full((r, m), -1, dtype=torch.int64)
    variant = torch.full((r, k), -1, dtype=torch.int32)
    strength = torch.zeros(r, k)
    for i in range(r):
        slot, p = int(row_slot[i]), int(row_pos[i])
        if slot >= s_slots:
            continue
        variant[i], strength[i] = slot_variant[slot], slot_strength[slot]
        for age in range(m):
            if p - age >= 0:
                ctx[i, m - 1 - age] = int(hist[slot, p - age])
    logits = torch.randn(r, 40)
    row_scale = torch.tensor(rng.uniform(0.3, 1.0, r), dtype=torch.float32)
    via_ctx = ts.apply(logits.clone(), variant, strength, ctx, row_scale=row_scale)
    via_hist = ts.apply_from_history(logits.clone(), row_slot, row_pos, torch.tensor(hist), slot_variant,
                                     slot_strength, row_scale=row_scale)
    assert torch.equal(via_hist.view(torch.int32), via_ctx.view(torch.int32))
    assert torch.equal(via_ctx[5].view(torch.int32), logits[5].view(torch.int32))
    assert (via_ctx[0] != logits[0]).any() and (via_ctx[6] != logits[6]).any() == bool((slot_variant[0] >= 0).any())


def test_blend_equals_dense_formula():
    """Exact mode, top_k >= V: softmax(z + row_scale * sum_k lambda_k sum_n w_n log P^(k)_n(. | c_n)) over all
    tokens, with counts from Counters over each style's raw documents."""
    rng = np.random.default_rng(14)
    vocab, k_smooth = 24, 1e-3
    packs, naive = [], []
    for name in ("a", "b"):
        pack, docs = random_pack(rng, vocab, 3, top_k=vocab, name=name)
        packs.append((pack, docs))
        naive.append(NaiveModel(docs, 3, top_k=vocab))
    ts = TritonSteering([compile_style(p, "exact") for p, _ in packs], "cpu", **SMALL)
    rows = 6
    all_docs = packs[0][1] + packs[1][1]
    ctx = contexts(rng, all_docs, rows, 2, foreign=0.1, vocab=vocab)
    variant = torch.tensor([[0, 1]] * rows)
    variant[rows - 1, 1] = -1  # a row with one column only
    lam = torch.tensor(rng.uniform(0.1, 1.0, size=(rows, 2)), dtype=torch.float32)
    scale = torch.tensor(rng.uniform(0.5, 1.0, rows), dtype=torch.float32)
    z = torch.randn(rows, vocab) * 3
    out = ts.apply(z.clone(), variant, lam, ctx, row_scale=scale)
    worst = 0.0
    for r in range(rows):
        hist = [t for t in ctx[r].tolist() if t >= 0]
        want = z[r].double().clone()
        for j in range(2):
            vid = int(variant[r, j])
            if vid < 0:
                continue
            pack, model = packs[vid][0], naive[vid]
            for n in (1, 2, 3):
                c = model.matched(n, hist)
                if c is None:
                    continue
                lp = torch.tensor([model.log_prob(n, c, t, k_smooth, vocab) for t in range(vocab)], dtype=torch.float64)
                want += float(scale[r]) * float(lam[r, j]) * pack.weights[n - 1] * lp
        diff = torch.log_softmax(out[r].double(), 0) - torch.log_softmax(want, 0)
        worst = max(worst, float(diff.abs().max()))
    assert worst < 1e-4
