"""Evaluation metrics and per-step steering against naive references built from the definitions."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import NaiveModel, random_pack
from vllm_ngram_style.evaluation.metrics import (PackScorer, js_divergence_bits, ppl_from_logprobs,
                                                 repetition_rate, score_sequence)
from vllm_ngram_style.evaluation.report import aggregate, goal_check
from vllm_ngram_style.evaluation.steer import RowSteerer, Steer
from vllm_ngram_style.loop_guard import LOOP_GUARD_WINDOW
from vllm_ngram_style.loop_guard import guard_banned_tokens


def naive_mixture_logprob(naive: NaiveModel, weights, seq, k, vocab, truncated_unigrams=False):
    """log P_mix of each token of seq, contexts from seq itself, from raw document counts
    (order 1 from the full unigram counts unless truncated_unigrams)."""
    out = []
    for i, t in enumerate(seq):
        num = den = 0.0
        for n, w in enumerate(weights, 1):
            if w <= 0:
                continue
            ctx = naive.matched(n, seq[:i])
            if ctx is None:
                continue
            if n == 1 and not truncated_unigrams:
                full = naive.full[(1, ())]
                num += w * (full.get(t, 0) + k) / (sum(full.values()) + k * vocab)
            else:
                num += w * math.exp(naive.log_prob(n, ctx, t, k, vocab))
            den += w
        out.append(math.log(num / den) if den > 0 else math.log(1.0 / vocab))
    return out


def sequences_from(rng, docs, vocab, count=6, length=30):
    """Half copied from the corpus (many matches), half random (few)."""
    seqs = []
    for i in range(count):
        if i % 2 == 0:
            d = [int(x) for x in docs[rng.integers(len(docs))]]
            seqs.append((d * 3)[:length])
        else:
            seqs.append([int(x) for x in rng.integers(0, vocab, size=length)])
    return seqs


@pytest.mark.parametrize("seed,orders,top_k", [(0, 3, 4), (1, 3, 512), (2, 2, 3), (3, 4, 6)])
def test_style_ppl_matches_naive(seed, orders, top_k):
    rng = np.random.default_rng(seed)
    vocab = 40
    pack, docs = random_pack(rng, vocab, orders=orders, top_k=top_k)
    naive = NaiveModel(docs, orders, top_k)
    for truncated in (False, True):
        scorer = PackScorer(pack, truncated_unigrams=truncated)
        for seq in sequences_from(rng, docs, vocab):
            got = scorer.mixture_logprob(seq)
            want = naive_mixture_logprob(naive, pack.weights, seq, pack.smoothing_k, vocab, truncated)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            assert scorer.style_ppl(seq) == pytest.approx(math.exp(-np.mean(want)), rel=1e-12)
            for i in (0, 1, 2, len(seq) - 1):
                dense = scorer.mixture_dense(seq, i)
                # top-K truncation loses the mass of dropped continuations; without it P_mix sums to 1
                assert dense.sum() <= 1 + 1e-9
                if top_k >= vocab and not truncated:
                    assert dense.sum() == pytest.approx(1.0, abs=1e-9)
                assert math.log(dense[seq[i]]) == pytest.approx(want[i], rel=1e-12)


def test_style_ppl_uniform_fallback():
    rng = np.random.default_rng(5)
    pack, docs = random_pack(rng, 30, orders=2, top_k=4, weights=[0.0, 1.0])
    scorer = PackScorer(pack)
    # the first token has no order-2 context and order 1 has weight 0: uniform 1/V
    assert scorer.mixture_logprob([3, 4])[0] == pytest.approx(math.log(1 / 30))


@pytest.mark.parametrize("seed", range(3))
def test_overlap_and_bigram_rates_match_naive(seed):
    rng = np.random.default_rng(seed)
    vocab, top_k = 50, 3
    pack, docs = random_pack(rng, vocab, orders=3, top_k=top_k)
    naive = NaiveModel(docs, 3, top_k)
    scorer = PackScorer(pack, top_unigrams=7)
    uni = Counter(int(t) for d in docs for t in d)
    top7 = {t for t, _ in sorted(uni.items(), key=lambda tc: (-tc[1], tc[0]))[:7]}
    for seq in sequences_from(rng, docs, vocab):
        assert scorer.unigram_overlap(seq) == pytest.approx(sum(t in top7 for t in seq) / len(seq))
        seen = [naive.kept.get((2, (a,)), {}).get(b, 0) > 0 for a, b in zip(seq, seq[1:])]
        assert scorer.bigram_seen_rate(seq) == pytest.approx(sum(seen) / len(seen))
    assert math.isnan(scorer.bigram_seen_rate([1]))


def test_repetition_rate_matches_naive():
    rng = np.random.default_rng(0)
    for _ in range(20):
        seq = [int(x) for x in rng.integers(0, 3, size=rng.integers(0, 25))]
        grams = [tuple(seq[i:i + 4]) for i in range(len(seq) - 3)]
        if not grams:
            assert math.isnan(repetition_rate(seq))
            continue
        repeats = sum(1 for i, g in enumerate(grams) if g in grams[:i])
        assert repetition_rate(seq) == pytest.approx(repeats / len(grams))
    assert repetition_rate([1, 2, 3, 4, 5]) == 0.0
    assert repetition_rate([7] * 10) == pytest.approx(6 / 7)


def naive_js_bits(p_logits, q_logits):
    def probs(row):
        m = max(row)
        e = [math.exp(z - m) if z != -math.inf else 0.0 for z in row]
        s = sum(e)
        return [x / s for x in e]
    out = []
    for a, b in zip(p_logits, q_logits):
        p, q = probs(a), probs(b)
        js = 0.0
        for pi, qi in zip(p, q):
            mi = 0.5 * (pi + qi)
            if pi > 0:
                js += 0.5 * pi * math.log2(pi / mi)
            if qi > 0:
                js += 0.5 * qi * math.log2(qi / mi)
        out.append(js)
    return out


def test_js_divergence_matches_naive():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(6, 31, generator=g) * 3
    q = p + torch.randn(6, 31, generator=g) * torch.tensor([0, .1, 1, 3, 10, 0.5])[:, None]
    q[5, :10] = -math.inf  # masked tokens on one side
    got = js_divergence_bits(p, q)
    want = naive_js_bits(p.double().tolist(), q.double().tolist())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    assert got[0].item() == pytest.approx(0.0, abs=1e-12)
    # disjoint supports: 1 bit
    a = torch.tensor([[0.0, -math.inf]])
    b = torch.tensor([[-math.inf, 0.0]])
    assert js_divergence_bits(a, b).item() == pytest.approx(1.0)


def naive_banned(hist, g):
    h = len(hist)
    if g < 2 or h < g or any(t < 0 for t in hist[h - g + 1:]):
        return set()
    return {hist[i + g - 1] for i in range(h - g + 1)
            if all(t >= 0 for t in hist[i:i + g]) and hist[i:i + g - 1] == hist[h - g + 1:]}


def naive_step(naive, pack, z_row, steer, prompt, generated, width):
    """One row's steered logits from the definitions (dense formulas, raw counts)."""
    out = list(z_row)
    if steer.style is None or steer.strength == 0:
        return out
    k, vocab = pack.smoothing_k, pack.vocab_size
    s = steer.strength
    if steer.adaptive:
        m = max(z_row)
        e = [math.exp(z - m) for z in z_row]
        tot = sum(e)
        s *= -sum((x / tot) * math.log(x / tot) for x in e if x > 0) / math.log(len(z_row))
    hist = list(prompt) + list(generated)
    for n, w in enumerate(pack.weights, 1):
        ctx = naive.matched(n, hist)
        if ctx is None:
            continue
        total = sum(naive.full[(n, ctx)].values())
        for t, c in naive.kept[(n, ctx)].items():
            if t >= width:
                continue
            if steer.mode == "exact":
                out[t] += s * w * math.log1p(c / k)
            else:
                out[t] += s * w * (math.log(c + k) - math.log(total + k * vocab))
    if steer.loop_guard:
        window = list(generated[-LOOP_GUARD_WINDOW:])
        for t in naive_banned(window, steer.loop_guard):
            if t < width:  # the unsteered logit, minus strength x penalty nats
                out[t] = z_row[t] - steer.strength * steer.loop_penalty
    return out


@pytest.mark.parametrize("seed", range(3))
def test_row_steerer_matches_naive(seed):
    rng = np.random.default_rng(seed)
    vocab, top_k = 24, 6
    pack, docs = random_pack(rng, vocab, orders=3, top_k=top_k, name="s")
    naive = NaiveModel(docs, 3, top_k)
    steerer = RowSteerer({"s": pack}, ("exact", "paper"))
    width = vocab + 3  # the model's logits are wider than the pack's vocabulary
    steers = [Steer(), Steer("s", 0.7, "exact"), Steer("s", 0.4, "paper"), Steer("s", 1.3, "exact", adaptive=True),
              Steer("s", 0.9, "exact", adaptive=True, loop_guard=2), Steer("s", 0.5, "paper", loop_guard=3),
              Steer("s", 0.8, "exact", adaptive=True, loop_guard=2, loop_penalty=3.0),
              Steer("s", 0.6, "exact", loop_guard=3, loop_penalty=0.5),
              Steer("s", 0.0, "exact", loop_guard=2, loop_penalty=4.0)]
    prompts, gens = [], []
    for i in range(len(steers)):
        d = [int(x) for x in docs[rng.integers(len(docs))]]
        prompts.append(d[:rng.integers(0, 3)])
        loop = (d * 10)[: rng.integers(0, 90)] if i % 2 else [int(x) for x in rng.integers(0, 4, 20)]
        gens.append(loop)
    z = torch.randn(len(steers), width, generator=torch.Generator().manual_seed(seed), dtype=torch.float32) * 2
    got = steerer.apply(z.clone(), steers, [steerer.context(p, g) for p, g in zip(prompts, gens)],
                        [steerer.history(g) for g in gens])
    for r, st in enumerate(steers):
        want = naive_step(naive, pack, z[r].tolist(), st, prompts[r], gens[r], width)
        np.testing.assert_allclose(got[r].numpy(), np.array(want, dtype=np.float64), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0], z[0]) and torch.equal(got[-1], z[-1])  # unsteered rows bit for bit


def test_along_sequence_matches_step_by_step():
    rng = np.random.default_rng(7)
    pack, docs = random_pack(rng, 20, orders=3, top_k=5, name="s")
    steerer = RowSteerer({"s": pack})
    prompt, gen = [1, 2], [int(x) for x in (list(docs[0]) * 5)[:15]]
    z = torch.randn(len(gen), 20, generator=torch.Generator().manual_seed(1))
    st = Steer("s", 0.8, "exact", adaptive=True, loop_guard=2)
    seq = steerer.along_sequence(z, st, prompt, gen)
    for i in range(len(gen)):
        one = steerer.apply(z[i:i + 1].clone(), [st], [steerer.context(prompt, gen[:i])], [steerer.history(gen[:i])])
        assert torch.equal(seq[i], one[0])


def test_row_steerer_matches_steering_core():
    """The evaluation's per-step steering equals the plugin's SteeringCore on random rows."""
    import importlib.util

    if importlib.util.find_spec("vllm_ngram_style.steering_core") is None:
        pytest.skip("steering_core not present")
    from vllm_ngram_style.steering_core import SteeringCore

    rng = np.random.default_rng(3)
    pack, docs = random_pack(rng, 30, orders=3, top_k=6, name="s")
    core = SteeringCore({"s": pack}, ("exact", "paper"), "cpu", backend="reference")
    steerer = RowSteerer({"s": pack}, ("exact", "paper"))
    steers = [Steer("s", 0.6, "exact", adaptive=True, loop_guard=2), Steer(), Steer("s", 0.3, "paper", loop_guard=3),
              Steer("s", 1.0, "exact"), Steer("s", 0.7, "exact", adaptive=True, loop_guard=2, loop_penalty=2.5)]
    gens = [[int(x) for x in (list(docs[i]) * 8)[:70]] for i in range(len(steers))]
    prompts = [[1], [], [2, 3, 4], [5], [6, 7]]
    z = torch.randn(len(steers), 30, generator=torch.Generator().manual_seed(0))
    ctx = [steerer.context(p, g) for p, g in zip(prompts, gens)]
    hist = [steerer.history(g) for g in gens]
    mine = steerer.apply(z.clone(), steers, ctx, hist)
    variant = torch.tensor([core.variant_id(s.style, s.mode) if s.active else -1 for s in steers])
    theirs = core.apply(z.clone(), variant, torch.tensor([s.strength for s in steers], dtype=torch.float32),
                        torch.tensor(ctx), torch.tensor([s.adaptive for s in steers]),
                        torch.tensor([s.loop_guard for s in steers], dtype=torch.int32), [2, 3], torch.tensor(hist),
                        torch.tensor([s.strength * s.loop_penalty for s in steers], dtype=torch.float32))
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)
    # the penalty moved the guarded tokens of the last row strictly below their unsteered logits
    banned = guard_banned_tokens(torch.tensor([hist[-1]]), 2)[0]
    banned = banned[banned >= 0]
    assert banned.numel() > 0
    assert torch.allclose(theirs[-1, banned], z[-1, banned] - 0.7 * 2.5)


def test_score_sequence_and_aggregate_and_goal():
    rng = np.random.default_rng(0)
    pack, docs = random_pack(rng, 30, orders=3, top_k=5)
    scorer = PackScorer(pack)
    seq = [int(x) for x in docs[0]][:10]
    m = score_sequence(scorer, seq, [-1.0] * len(seq), [0.25] * len(seq))
    assert m.base_ppl == pytest.approx(math.e) and m.js_bits == pytest.approx(0.25) and m.tokens == len(seq)
    assert ppl_from_logprobs([math.log(0.5)] * 3) == pytest.approx(2.0)

    def rec(fam, lam, style, base, rep, pid):
        return {"corpus": "c", "decoding": "greedy", "family": fam, "lambda": lam, "prompt_id": pid,
                "tokens": 10, "style_ppl": style, "base_ppl": base, "rep4": rep, "js_bits": 0.0,
                "unigram_overlap": 0.5, "bigram_seen": 0.5, "style_nll_sum": 10 * math.log(style),
                "base_nll_sum": 10 * math.log(base)}
    recs = []
    # style cut >= 50% at 0.1..0.3 (width 0.2) but base ppl too high at 0.4; outlier prompt p2 breaks the mean only
    for pid, mult in [("p0", 1.0), ("p1", 1.0), ("p2", 50.0)]:
        recs.append(rec("unsteered", 0.0, 100.0, 10.0, 0.1, pid))
        for lam, style, base in [(0.05, 80, 10), (0.1, 50, 10.5), (0.2, 40, 11), (0.3, 45, 10.9), (0.4, 30, 12)]:
            recs.append(rec("best", lam, style * mult, base, 0.12, pid))
    rows = aggregate(recs)
    r01 = [r for r in rows if r["family"] == "best" and r["lambda"] == 0.1][0]
    assert r01["n"] == 3 and r01["style_ppl_median"] == 50 and r01["style_ppl_mean"] == pytest.approx((50 + 50 + 2500) / 3)
    assert r01["style_ppl_pooled"] == pytest.approx(math.exp(np.mean(np.log([50, 50, 2500]))))
    g = goal_check(rows)[0]
    assert g["passing_lambdas"] == [0.1, 0.2, 0.3] and g["widest_run"] == [0.1, 0.2, 0.3] and g["met"]
    g_mean = goal_check(rows, stat="mean")[0]
    assert not g_mean["met"]
