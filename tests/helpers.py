"""Shared test helpers: random packs straight from token streams, and naive formula references."""
from collections import Counter

import numpy as np

from vllm_ngram_style.pack import StylePack, default_weights
from vllm_ngram_style.train import count_token_documents


def random_docs(rng, n_docs, vocab, max_len=40, zipf=1.1):
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    perm = rng.permutation(vocab)  # frequent tokens spread over the id range
    return [perm[rng.choice(vocab, size=rng.integers(1, max_len), p=p)].astype(np.int32) for _ in range(n_docs)]


def random_pack(rng, vocab, orders=3, top_k=8, n_docs=80, k=1e-3, name="s", weights=None):
    docs = random_docs(rng, n_docs, vocab)
    counter, tables = count_token_documents(docs, vocab, orders, top_k)
    pack = StylePack(tables, counter.unigram_counts, vocab, "fp-test", k, top_k,
                     weights or default_weights(orders), {}, name)
    return pack, docs


class NaiveModel:
    """Truncated counts per (order, context) computed with Counters, straight from the definitions."""

    def __init__(self, docs, orders, top_k):
        self.orders = orders
        self.full = {}  # (n, ctx) -> Counter of next tokens
        for d in docs:
            d = [int(x) for x in d]
            for n in range(1, orders + 1):
                for i in range(len(d) - n + 1):
                    self.full.setdefault((n, tuple(d[i:i + n - 1])), Counter())[d[i + n - 1]] += 1
        self.kept = {}
        for key, cnt in self.full.items():
            best = sorted(cnt.items(), key=lambda tc: (-tc[1], tc[0]))[:top_k]
            self.kept[key] = dict(best)

    def matched(self, n, history):
        """The order-n context of a history (list, newest last) if it is long enough and seen."""
        if n > 1 and len(history) < n - 1:
            return None
        ctx = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
        return ctx if (n, ctx) in self.full else None

    def log_prob(self, n, ctx, t, k, vocab):
        counts = self.kept[(n, ctx)]
        total = sum(self.full[(n, ctx)].values())  # N counts every continuation, kept or not
        return np.log((counts.get(t, 0) + k) / (total + k * vocab))
