"""Counting equals a naive Counter over random token streams, document boundaries respected."""
from collections import Counter

import numpy as np
import pytest

from vllm_ngram_style.counting import NgramCounter, build_top_k_table, pack_keys, unpack_keys


def random_docs(rng, n_docs, vocab, max_len=40):
    # Skewed token distribution so n-grams repeat and ties in counts occur.
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    return [rng.choice(vocab, size=rng.integers(0, max_len), p=p).astype(np.int32) for _ in range(n_docs)]


def naive_counts(docs, n):
    c = Counter()
    for d in docs:
        for i in range(len(d) - n + 1):
            c[tuple(int(x) for x in d[i:i + n])] += 1
    return c


@pytest.mark.parametrize("vocab,orders,chunk", [(7, 3, 50), (300, 4, 97), (70000, 6, 10_000), (2**20, 3, 31)])
def test_counts_match_counter(vocab, orders, chunk):
    rng = np.random.default_rng(vocab)
    docs = random_docs(rng, 120, vocab)
    counter = NgramCounter(orders, vocab, chunk_tokens=chunk)  # small chunks force many merges
    for d in docs:
        counter.add_document(d)
    result = counter.finish()
    for oc in result:
        got = {tuple(int(x) for x in g): int(c) for g, c in zip(oc.ngrams, oc.counts)}
        assert got == dict(naive_counts(docs, oc.order)), f"order {oc.order}"
        # sorted lexicographically
        assert [tuple(g) for g in oc.ngrams.tolist()] == sorted(tuple(g) for g in oc.ngrams.tolist())
    assert counter.tokens == sum(len(d) for d in docs)
    np.testing.assert_array_equal(counter.unigram_counts, np.bincount(np.concatenate(docs), minlength=vocab))


def test_no_ngram_crosses_documents():
    counter = NgramCounter(2, 10)
    counter.add_document([1, 2])
    counter.add_document([3, 4])
    bigrams = {tuple(g) for g in counter.finish()[1].ngrams.tolist()}
    assert bigrams == {(1, 2), (3, 4)}  # (2, 3) would cross the boundary


def test_pack_keys_round_trip_and_order():
    rng = np.random.default_rng(0)
    for bits, n in [(1, 6), (17, 3), (18, 6), (21, 5)]:
        grams = rng.integers(0, 2**bits, size=(500, n)).astype(np.int32)
        keys = pack_keys(grams, bits)
        np.testing.assert_array_equal(unpack_keys(keys, n, bits), grams)
        by_keys = np.lexsort(keys.T[::-1])
        by_tokens = np.lexsort(grams.T[::-1])
        np.testing.assert_array_equal(grams[by_keys], grams[by_tokens])


def test_top_k_table_matches_naive():
    rng = np.random.default_rng(3)
    docs = random_docs(rng, 200, 30)
    counter = NgramCounter(3, 30)
    for d in docs:
        counter.add_document(d)
    top_k = 4
    for oc in counter.finish():
        t = build_top_k_table(oc, top_k)
        naive = naive_counts(docs, oc.order)
        by_ctx = {}
        for g, c in naive.items():
            by_ctx.setdefault(g[:-1], []).append((g[-1], c))
        assert [tuple(c) for c in t.context_tokens.tolist()] == sorted(by_ctx)
        for i, ctx in enumerate(sorted(by_ctx)):
            conts = by_ctx[ctx]
            assert t.context_total[i] == sum(c for _, c in conts)  # N counts every continuation
            want = sorted(sorted(conts, key=lambda tc: (-tc[1], tc[0]))[:top_k])  # ties: lower id first; stored by id
            lo, hi = t.context_offsets[i], t.context_offsets[i + 1]
            assert list(zip(t.entry_tokens[lo:hi].tolist(), t.entry_counts[lo:hi].tolist())) == want


def test_bad_inputs():
    with pytest.raises(ValueError, match="orders must be between 1 and 6"):
        NgramCounter(7, 10)
    with pytest.raises(ValueError, match="out of range"):
        counter = NgramCounter(2, 10)
        counter.add_document([3, 10])
        counter.finish()
