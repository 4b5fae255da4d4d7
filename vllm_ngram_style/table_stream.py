"""Top-K tables built block by block from an order's sorted counts (what a pack stores per order).

The result is the same as counting.build_top_k_table on the whole order (tests check it on random
counts): contexts in lexicographic order, each with its total over every continuation and its
top_k continuations by count (ties: lower token id), stored by token id. Blocks arrive as packed
keys ([m, W] int64, counting.pack_keys) with counts, sorted, distinct; a context may straddle two
blocks, so the rows of the last context of a block wait for the next one.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .counting import OrderTable

_JIT = dict(nogil=True, cache=True)


@nb.njit(**_JIT)
def _same_context(keys, i, j, bits) -> bool:
    """Rows i and j share their first n-1 tokens: every word but the last equal, and the last word
    equal once its lowest token (the n-gram's last) is shifted out."""
    w = keys.shape[1] - 1
    for k in range(w):
        if keys[i, k] != keys[j, k]:
            return False
    return (keys[i, w] >> bits) == (keys[j, w] >> bits)


@nb.njit(**_JIT)
def last_context_start(keys, bits) -> int:
    """Index of the first row of the last context in sorted keys [m, W] (m > 0)."""
    i = keys.shape[0] - 1
    while i > 0 and _same_context(keys, i - 1, keys.shape[0] - 1, bits):
        i -= 1
    return i


@nb.njit(**_JIT)
def _token_places(n, bits):
    """(word [n], shift [n]) of each token of a packed n-gram: token j is (key[word[j]] >> shift[j]) & mask."""
    per_word = 63 // bits
    word = np.empty(n, np.int64)
    shift = np.empty(n, np.int64)
    for j in range(n):
        w = j // per_word
        width = min(per_word, n - w * per_word)
        word[j] = w
        shift[j] = (width - 1 - (j - w * per_word)) * bits
    return word, shift


@nb.njit(**_JIT)
def context_sizes(keys, bits, top_k):
    """(contexts, stored entries) of a block of whole contexts: what top_k_block would output."""
    m = keys.shape[0]
    contexts = entries = 0
    lo = 0
    for i in range(1, m + 1):
        if i < m and _same_context(keys, i - 1, i, bits):
            continue
        contexts += 1
        entries += min(i - lo, top_k)
        lo = i
    return contexts, entries


@nb.njit(**_JIT)
def top_k_block(keys, counts, n, bits, top_k):
    """One block of whole contexts (sorted keys [m, W], counts [m]) -> (context_tokens [C, n-1] int32,
    context_total [C] int64, kept per context [C] int64, entry_tokens [E] int32, entry_counts [E] int64).
    Sized by context_sizes first, so that nothing larger than the output is allocated."""
    m = keys.shape[0]
    word, shift = _token_places(n, bits)
    last, mask = keys.shape[1] - 1, (np.int64(1) << bits) - 1  # the n-gram's last token: lowest bits of the last word
    n_ctx, n_entries = context_sizes(keys, bits, top_k)
    ctx_tokens = np.empty((n_ctx, n - 1), np.int32)
    totals = np.empty(n_ctx, np.int64)
    kept = np.empty(n_ctx, np.int64)
    entry_tokens = np.empty(n_entries, np.int32)
    entry_counts = np.empty(n_entries, np.int64)
    c = e = lo = 0
    for i in range(1, m + 1):
        if i < m and _same_context(keys, i - 1, i, bits):
            continue
        total = np.int64(0)  # context [lo, i) is complete
        for r in range(lo, i):
            total += counts[r]
        totals[c] = total
        for j in range(n - 1):
            ctx_tokens[c, j] = np.int32((keys[lo, word[j]] >> shift[j]) & mask)
        if i - lo <= top_k:
            for r in range(lo, i):
                entry_tokens[e] = np.int32(keys[r, last] & mask)
                entry_counts[e] = counts[r]
                e += 1
            kept[c] = i - lo
        else:  # the top_k by count; stable, so among equal counts the lower token id (earlier row) wins
            for r in np.sort(np.argsort(-counts[lo:i], kind="mergesort")[:top_k]) + lo:
                entry_tokens[e] = np.int32(keys[r, last] & mask)
                entry_counts[e] = counts[r]
                e += 1
            kept[c] = top_k
        c += 1
        lo = i
    return ctx_tokens, totals, kept, entry_tokens, entry_counts


class ContextBlocks:
    """Regroups an order's sorted blocks into blocks of whole contexts: the rows of the last context
    of each block wait for the next block. ``on_block(keys, counts)`` gets each regrouped block."""

    def __init__(self, order: int, bits: int, on_block):
        if order < 2:
            raise ValueError("contexts exist for orders >= 2 (order 1 has a single context)")
        self.order, self.bits, self.on_block = order, bits, on_block
        self.distinct_ngrams = 0
        self._carry: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if keys.shape[0] == 0:
            return
        self.distinct_ngrams += keys.shape[0]
        if self._carry is not None:
            keys = np.concatenate([self._carry[0], keys])
            counts = np.concatenate([self._carry[1], counts])
        cut = last_context_start(keys, self.bits)
        if cut:
            self.on_block(keys[:cut], counts[:cut])
        self._carry = (keys[cut:].copy(), counts[cut:].copy())

    def finish(self) -> None:
        if self._carry is not None:
            self.on_block(*self._carry)
            self._carry = None


class TopKTableBuilder(ContextBlocks):
    """Feeds one order's sorted blocks through top_k_block; hands each finished piece to ``sink``
    as (context_tokens, context_total, kept, entry_tokens, entry_counts)."""

    def __init__(self, order: int, top_k: int, bits: int, sink):
        super().__init__(order, bits, lambda k, c: sink(*top_k_block(k, c, order, bits, top_k)))


class TableSizer(ContextBlocks):
    """Counts what TopKTableBuilder will output (contexts, entries), without building it."""

    def __init__(self, order: int, top_k: int, bits: int):
        self.contexts = self.entries = 0
        super().__init__(order, bits, self._add)
        self.top_k = top_k

    def _add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        c, e = context_sizes(keys, self.bits, self.top_k)
        self.contexts += int(c)
        self.entries += int(e)


class TableCollector:
    """A sink that keeps the pieces and joins them into an OrderTable (for packs built in memory)."""

    def __init__(self, order: int):
        self.order = order
        self.pieces: list[tuple] = []

    def __call__(self, *piece) -> None:
        self.pieces.append(piece)

    def table(self, distinct_ngrams: int) -> OrderTable:
        n = self.order
        if not self.pieces:
            return OrderTable(n, np.zeros((0, n - 1), np.int32), np.zeros(0, np.int64), np.zeros(1, np.int64),
                              np.zeros(0, np.int32), np.zeros(0, np.int64), distinct_ngrams)
        ctx, totals, kept, tokens, counts = (np.concatenate(parts) for parts in zip(*self.pieces))
        offsets = np.zeros(kept.size + 1, np.int64)
        np.cumsum(kept, out=offsets[1:])
        return OrderTable(n, ctx, totals, offsets, tokens, counts, distinct_ngrams)


def build_table_streaming(order: int, blocks, top_k: int, bits: int) -> OrderTable:
    """An order's whole top-K table from its sorted count blocks (in memory)."""
    collector = TableCollector(order)
    builder = TopKTableBuilder(order, top_k, bits, collector)
    for keys, counts in blocks:
        builder.add(keys, counts)
    builder.finish()
    return collector.table(builder.distinct_ngrams)
