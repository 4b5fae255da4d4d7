"""Entropy-adaptive scale and loop guard against slow, per-row Python references."""
import math

import numpy as np
import pytest
import torch

from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.loop_guard import capture_banned, guard_banned_tokens, restore_banned


def naive_scale(row: list[float]) -> float:
    """H(softmax(z)) / log V, one row, in float64 Python; -inf logits have p = 0 and add nothing."""
    m = max(row)
    exps = [math.exp(z - m) if z != -math.inf else 0.0 for z in row]
    s = sum(exps)
    h = 0.0
    for e in exps:
        if e > 0:
            p = e / s
            h -= p * math.log(p)
    return h / math.log(len(row))


@pytest.mark.parametrize("seed", range(4))
def test_adaptive_scale_matches_naive(seed):
    g = torch.Generator().manual_seed(seed)
    r, v = 7, 53
    logits = torch.randn(r, v, generator=g) * (0.5 + 4 * seed)  # from near-uniform to peaked
    logits[0] = 0.0  # uniform: scale 1
    logits[1, 5:] = -math.inf  # masked tokens: entropy of 5 equal tokens, normalised by log V
    logits[1, :5] = 1.0
    logits[2, :] = -30.0
    logits[2, 3] = 30.0  # one-hot: scale ~0
    got = adaptive_scale(logits)
    assert got.dtype == torch.float32 and got.shape == (r,)
    want = torch.tensor([naive_scale(row) for row in logits.double().tolist()], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got[0].item() == pytest.approx(1.0, abs=1e-6)
    assert got[1].item() == pytest.approx(math.log(5) / math.log(v), abs=1e-6)
    assert got[2].item() < 1e-20 + 1e-6
    assert bool(((got >= 0) & (got <= 1 + 1e-6)).all())


def test_adaptive_scale_dtypes():
    logits = torch.randn(3, 40)
    want = adaptive_scale(logits)
    torch.testing.assert_close(adaptive_scale(logits.to(torch.bfloat16)), want, rtol=0.05, atol=0.02)
    torch.testing.assert_close(adaptive_scale(logits.double()), want)


def naive_banned(hist: list[int], g: int) -> set[int]:
    """Tokens t such that (last g-1 tokens, t) occurs somewhere in the row's history (-1 = absent)."""
    h = len(hist)
    if g < 2 or h < g:
        return set()
    suffix = hist[h - g + 1:]
    if any(t < 0 for t in suffix):
        return set()
    out = set()
    for i in range(h - g + 1):
        window = hist[i:i + g]
        if all(t >= 0 for t in window) and window[:-1] == suffix:
            out.add(window[-1])
    return out


def random_history(rng, r, h, vocab):
    """Right-aligned histories with -1 padding; small vocabularies so repeats are common."""
    hist = rng.integers(0, vocab, size=(r, h))
    for i in range(r):
        pad = rng.integers(0, h + 1) if i % 3 == 0 else 0
        hist[i, :pad] = -1
    # some rows with an exact loop, which must ban the token that continues it
    hist[1] = np.tile(np.arange(3), h)[:h]
    return torch.as_tensor(hist, dtype=torch.int64)


@pytest.mark.parametrize("g", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_guard_banned_tokens_matches_naive(g, seed):
    rng = np.random.default_rng(seed)
    for h, vocab in [(12, 3), (20, 5), (3, 2), (1, 4)]:
        hist = random_history(rng, 9, h, vocab)
        banned = guard_banned_tokens(hist, g)
        assert banned.dtype == torch.int64 and banned.shape[0] == 9
        for row, b in zip(hist.tolist(), banned.tolist()):
            kept = [t for t in b if t >= 0]
            assert len(kept) == len(set(kept)), "banned tokens must be distinct per row"
            assert set(kept) == naive_banned(row, g)
    if g == 3:
        looped = guard_banned_tokens(torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]]), 3)
        assert set(looped[0].tolist()) - {-1} == {2}


@pytest.mark.parametrize("seed", range(3))
def test_capture_restore_bit_for_bit(seed):
    """Banned tokens get back their unsteered logits exactly; every other logit keeps its steered value."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    r, h, v = 8, 16, 6
    hist = random_history(rng, r, h, v)
    banned = guard_banned_tokens(hist, 2)
    before_all = torch.randn(r, v, generator=gen)
    logits = before_all.clone()
    before = capture_banned(logits, banned)
    logits += torch.randn(r, v, generator=gen)  # stand-in for steering
    steered = logits.clone()
    restore_banned(logits, banned, before)
    for i in range(r):
        ban = set(banned[i].tolist()) - {-1}
        for t in range(v):
            want = before_all[i, t] if t in ban else steered[i, t]
            assert logits[i, t].item() == want.item()  # bit for bit, no tolerance


def test_restore_with_no_banned_is_noop():
    hist = torch.full((3, 5), -1, dtype=torch.int64)
    banned = guard_banned_tokens(hist, 3)
    logits = torch.randn(3, 7)
    before = capture_banned(logits, banned)
    logits2 = logits + 1.0
    expect = logits2.clone()
    restore_banned(logits2, banned, before)
    assert torch.equal(logits2, expect)
