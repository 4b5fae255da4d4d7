"""Synthetic compiled styles with realistic shape statistics, for benchmarks and size checks.

The GPU machines have no corpora and no tokenizer, so benchmarks build tables whose sizes and
skew match a real pack: by default Don Quixote with the SmolLM2 tokenizer (gpu-notes.md): 16.4k
bigram contexts holding 152k entries, 166k trigram contexts holding 377k entries, top-512, a
512-entry unigram table. Entries per context follow a power law over context rank (a few contexts
fill all 512 slots, most hold one or two), token ids are Zipf-skewed, counts fall off within a
context, and deltas are exact-mode values w_n log(1 + C / k).
"""
from __future__ import annotations

import numpy as np

from vllm_ngram_style.contract import CompiledOrder, CompiledStyle

DON_QUIXOTE = dict(contexts=(1, 16_400, 166_000), entries=(512, 152_000, 377_000))
WEIGHTS = (0.1, 0.3, 0.6)
SMOOTHING_K = 1e-3


def _lengths(contexts: int, entries: int, top_k: int) -> np.ndarray:
    """[contexts] entries per context, clip(top_k * rank^-s, 1, top_k), with s solved so they sum to ~entries."""
    if contexts * top_k < entries:
        raise ValueError(f"{entries} entries do not fit {contexts} contexts of top-{top_k}")
    rank = np.arange(1, contexts + 1, dtype=np.float64)
    lo, hi = 0.0, 8.0
    for _ in range(40):
        s = (lo + hi) / 2
        total = np.clip(np.floor(top_k * rank ** -s), 1, top_k).sum()
        lo, hi = (s, hi) if total > entries else (lo, s)
    return np.clip(np.floor(top_k * rank ** -hi), 1, top_k).astype(np.int64)


def _zipf_ids(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """n token ids in [0, vocab), Zipf-skewed over a random permutation of the vocabulary."""
    perm = rng.permutation(vocab)
    ranks = np.minimum(rng.zipf(1.2, size=n) - 1, vocab - 1)
    return perm[ranks]


def _unique_rows(rows: np.ndarray, vocab: int) -> np.ndarray:
    """np.unique(rows, axis=0), through one packed int64 key per row when the row fits (much faster)."""
    m = rows.shape[1]
    bits = max(1, int(vocab - 1).bit_length())
    if m == 0 or m * bits > 63:
        return np.unique(rows, axis=0)
    key = np.zeros(rows.shape[0], np.int64)
    for j in range(m):
        key = (key << bits) | rows[:, j]
    key = np.unique(key)
    out = np.empty((key.shape[0], m), np.int64)
    for j in range(m - 1, -1, -1):
        out[:, j] = key & ((1 << bits) - 1)
        key = key >> bits
    return out


def _context_sets(rng: np.random.Generator, contexts, vocab: int) -> list[np.ndarray]:
    """Per order n >= 2, [C_n, n-1] distinct contexts (oldest first); index n-1. Suffix-consistent, as in a
    real pack: a context of order n is a Zipf-chosen context of order n-1 with one older token in front."""
    out = [np.zeros((1, 0), np.int64)]
    for n in range(2, len(contexts) + 1):
        count, prev = contexts[n - 1], out[-1]
        got = np.zeros((0, n - 1), np.int64)
        for _ in range(50):
            if got.shape[0] >= count:
                break
            k = 2 * (count - got.shape[0]) + 16
            older = _zipf_ids(rng, k, vocab) if n > 2 else np.zeros(k, np.int64)
            if n == 2:  # bigram contexts: single tokens, Zipf-skewed
                draw = _zipf_ids(rng, k, vocab)[:, None]
            else:
                suffix = prev[np.minimum(rng.zipf(1.1, size=k) - 1, prev.shape[0] - 1)]
                draw = np.concatenate([older[:, None], suffix], axis=1)
            if _ == 10:  # skew repeats too much for tiny vocabularies: mix in uniform tokens
                draw[:, 0] = rng.integers(0, vocab, size=k)
            got = _unique_rows(np.concatenate([got, draw]), vocab)
        if got.shape[0] < count:
            raise ValueError(f"could not draw {count} distinct order-{n} contexts from a vocabulary of {vocab}")
        out.append(got[rng.permutation(got.shape[0])[:count]])
    return out


def synth_order(rng: np.random.Generator, order: int, ctx: np.ndarray, entries: int, vocab: int, top_k: int,
                weight: float) -> CompiledOrder:
    """One order's entries for the given contexts [C, order-1]."""
    lengths = _lengths(ctx.shape[0], entries, min(top_k, vocab))  # [C]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Within a context, tokens are a run of a shared popular-token list from a random offset: distinct.
    pool = np.unique(_zipf_ids(rng, 8 * top_k, vocab))
    if pool.shape[0] < top_k:
        pool = np.unique(np.concatenate([pool, rng.permutation(vocab)[:top_k]]))
    rank = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # position within the context
    start = np.repeat(rng.integers(0, pool.shape[0], size=ctx.shape[0]), lengths)
    tokens = pool[(start + rank) % pool.shape[0]].astype(np.int64)
    counts = np.maximum(1, np.repeat(lengths, lengths) // (rank + 1))  # falling within a context
    deltas = weight * np.log1p(counts / SMOOTHING_K)
    return CompiledOrder(order, ctx, offsets, tokens, deltas)


def synth_style(seed: int, vocab: int, contexts=DON_QUIXOTE["contexts"], entries=DON_QUIXOTE["entries"],
                top_k: int = 512, weights=WEIGHTS, name: str = "synthetic") -> CompiledStyle:
    """A CompiledStyle of len(contexts) orders with the given context and entry counts per order."""
    rng = np.random.default_rng(seed)
    ctx_sets = _context_sets(rng, contexts, vocab)
    orders = [synth_order(rng, n, c, e, vocab, top_k, w)
              for n, (c, e, w) in enumerate(zip(ctx_sets, entries, weights), 1)]
    return CompiledStyle(f"{name}-{seed}", "exact", orders)


def chain_weights(style: CompiledStyle) -> np.ndarray:
    """[C_top] entries along each top-order context's suffix chain (its own plus its suffixes')."""
    m = style.max_order - 1
    top = style.orders[m]
    weight = np.diff(top.offsets).astype(np.float64)
    for n in range(2, style.max_order):  # add the lengths of the suffix contexts of lower orders
        o = style.orders[n - 1]
        lookup = {tuple(c): int(ln) for c, ln in zip(o.context_tokens.tolist(), np.diff(o.offsets).tolist())}
        weight += [lookup.get(tuple(c[m - (n - 1):]), 0) for c in top.context_tokens.tolist()]
    return weight


def sample_contexts(style: CompiledStyle, rng: np.random.Generator, rows: int, hit_rate: float = 0.9,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """[rows, max_order-1] contexts (oldest first) as generated text would meet them.

    With probability hit_rate a row continues a stored top-order context, chosen with probability
    proportional to the entries along its suffix chain (frequent contexts are both met more often
    and hold more continuations); otherwise its tokens are random (mostly unmatched above order 1).
    weights: chain_weights(style), when the caller samples the same style repeatedly.
    """
    m = style.max_order - 1
    out = rng.integers(0, max(1, int(style.orders[0].tokens.max(initial=0)) + 1), size=(rows, m))
    if m == 0 or style.orders[m].context_tokens.shape[0] == 0:
        return out
    top = style.orders[m]
    weight = chain_weights(style) if weights is None else weights
    pick = rng.choice(top.context_tokens.shape[0], size=rows, p=weight / weight.sum())
    hit = rng.random(rows) < hit_rate
    out[hit] = top.context_tokens[pick[hit]]
    return out
