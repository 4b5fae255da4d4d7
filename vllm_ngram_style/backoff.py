"""Backoff n-gram models over token ids, and their exact compilation into the sparse kernel contract.

A backoff model of orders 1..N (interpolated Kneser-Ney is one, and so is every ARPA file):
  Q_n(t | c) = p_n(c, t)               if (c, t) is an entry of order n,
             = b_n(c) * Q_{n-1}(t | c')  otherwise,
  Q_1(t)     = p_1(t) if t is an order-1 entry, else the floor f,
where c holds the last n-1 tokens, c' is c without its oldest token, and b_n(c) = 1 when c is not a
context of order n. Unrolling the recursion for a row whose contexts are c_2 .. c_N:
  log Q_N(t | c_N) = [log f + sum_n log b_n(c_n)] + sum_n [(c_n, t) is an entry] * D_n(c_n, t),
  D_n(c, t) = log p_n(c, t) - log b_n(c) - log Q_{n-1}(t | c'),    D_1(t) = log p_1(t) - log f.
The bracket is the same for every token of the row (softmax ignores it) and D_n depends on (c, t)
only, so the model is exactly the kernel contract z += lambda * sum_n D_n(c_n, t), with order n's
entries stored under its context c. Q_{n-1} in D_n is the full backoff value, so this holds for any
entry set (pruned or top-K truncated models, ARPA files whose lower orders lack an n-gram).
Contexts without entries only move the row constant and are left out of the compiled form.

Histories shorter than N-1 tokens (right-aligned, -1 padded) evaluate Q_{L+1}(t | h): exactly the
orders the kernel can match.

Pack layout (optional tensors, see pack.py), for each order n in 1..N:
  backoff{n}.context_tokens      [C_n, n-1] int32  lexicographically sorted (absent for n = 1)
  backoff{n}.context_log_backoff [C_n] float64      ln b_n(c); for n = 1 (one empty context): ln f
  backoff{n}.context_offsets     [C_n + 1] int64
  backoff{n}.entry_tokens        [E_n] int32        ascending token id within a context
  backoff{n}.entry_logprob       [E_n] float64      ln p_n(c, t)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .contract import CompiledOrder, CompiledStyle
from .counting import MAX_ORDER, bits_per_token, check_sparse_order, pack_keys

KINDS = ("kneser-ney", "arpa")


def row_keys(rows: np.ndarray, bits: int) -> np.ndarray:
    """[M, m] non-negative token ids -> [M] opaque keys whose byte order is the rows' lexicographic
    order (big-endian packed words viewed as one void scalar), for np.sort / np.searchsorted."""
    m = rows.shape[1]
    if m == 0:
        return np.zeros(rows.shape[0], dtype=np.int64)
    words = pack_keys(rows, bits)  # [M, W] int64, non-negative
    if words.shape[1] == 1:
        return words[:, 0]
    big = np.ascontiguousarray(words.astype(">i8"))
    return big.view(np.dtype((np.void, 8 * words.shape[1]))).ravel()


def lexsort_rows(rows: np.ndarray) -> np.ndarray:
    """Permutation sorting [M, m] rows lexicographically (first column most significant)."""
    if rows.shape[1] == 0:
        return np.arange(rows.shape[0])
    return np.lexsort(rows.T[::-1])


def strictly_sorted(keys: np.ndarray) -> bool:
    """Whether keys (from row_keys) are strictly increasing. Void keys have no '<' ufunc, so they
    are checked as 'a stable sort leaves them in place, and neighbours differ'."""
    if keys.shape[0] < 2:
        return True
    if keys.dtype.kind != "V":
        return bool(np.all(keys[1:] > keys[:-1]))
    return bool(np.all(keys[1:] != keys[:-1]) and np.all(np.argsort(keys, kind="stable") == np.arange(keys.shape[0])))


def find_rows(sorted_keys: np.ndarray, query_keys: np.ndarray) -> np.ndarray:
    """Index of each query key in sorted_keys, or -1."""
    if sorted_keys.shape[0] == 0:
        return np.full(query_keys.shape[0], -1, dtype=np.int64)
    pos = np.searchsorted(sorted_keys, query_keys).clip(max=sorted_keys.shape[0] - 1)
    return np.where(sorted_keys[pos] == query_keys, pos, -1).astype(np.int64)


@dataclass
class BackoffOrder:
    """One order of a backoff model (shapes in the module docstring)."""

    order: int
    context_tokens: np.ndarray  # [C, n-1] int32
    context_log_backoff: np.ndarray  # [C] float64
    context_offsets: np.ndarray  # [C+1] int64
    entry_tokens: np.ndarray  # [E] int32
    entry_logprob: np.ndarray  # [E] float64

    @property
    def num_contexts(self) -> int:
        return int(self.context_log_backoff.shape[0])

    def entry_context(self) -> np.ndarray:
        """[E] int64: the context index of every entry."""
        return np.repeat(np.arange(self.num_contexts, dtype=np.int64), np.diff(self.context_offsets))


@dataclass
class BackoffModel:
    orders: list[BackoffOrder]  # index n-1 holds order n
    vocab_size: int
    kind: str = "kneser-ney"
    info: dict = field(default_factory=dict)  # e.g. discounts; stored in the pack's metadata

    def __post_init__(self):
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def max_order(self) -> int:
        return len(self.orders)

    @property
    def floor(self) -> float:
        """ln of the probability of a token with no order-1 entry."""
        return float(self.orders[0].context_log_backoff[0])

    # ---- lookups ------------------------------------------------------------------------------

    def _keys(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted context keys [C], sorted entry keys [E] = context index * V + token) of order n."""
        if n not in self._index:
            o = self.orders[n - 1]
            ctx_keys = row_keys(o.context_tokens.astype(np.int64), bits_per_token(self.vocab_size))
            entry_keys = o.entry_context() * self.vocab_size + o.entry_tokens.astype(np.int64)
            self._index[n] = (ctx_keys, entry_keys)
        return self._index[n]

    def find_contexts(self, n: int, ctx: np.ndarray) -> np.ndarray:
        """[M, n-1] token ids (-1 = missing) -> [M] context index of order n, or -1."""
        if n == 1:
            return np.zeros(ctx.shape[0], dtype=np.int64)
        valid = ((ctx >= 0) & (ctx < self.vocab_size)).all(1)
        keys = row_keys(np.where(valid[:, None], ctx, 0).astype(np.int64), bits_per_token(self.vocab_size))
        found = find_rows(self._keys(n)[0], keys)
        return np.where(valid, found, -1)

    def find_entries(self, n: int, ci: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """[M] context indices (-1 = none) and [M] tokens -> [M] entry index of order n, or -1."""
        q = ci * self.vocab_size + tokens
        return np.where(ci >= 0, find_rows(self._keys(n)[1], q), -1)

    def logprob(self, context: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """ln Q(t | history) by the backoff recursion, from the slow, obviously-correct definition.

        context: [M, L] int64, right-aligned, -1 where the history is shorter; tokens: [M] in [0, V).
        Returns [M] float64. Uses the last min(L, N-1) tokens.
        """
        context = np.asarray(context, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        m = min(context.shape[1], self.max_order - 1)
        ctx = context[:, context.shape[1] - m:]
        out = np.empty(tokens.shape[0], dtype=np.float64)
        acc = np.zeros(tokens.shape[0], dtype=np.float64)  # sum of ln b_n over the orders backed off
        todo = np.arange(tokens.shape[0])
        for n in range(m + 1, 0, -1):
            o = self.orders[n - 1]
            ci = self.find_contexts(n, ctx[todo, m - (n - 1):])
            e = self.find_entries(n, ci, tokens[todo])
            hit = e >= 0
            out[todo[hit]] = acc[todo[hit]] + o.entry_logprob[e[hit]]
            miss, ci_miss = todo[~hit], ci[~hit]
            if n == 1:
                out[miss] = acc[miss] + self.floor
            else:
                acc[miss] += np.where(ci_miss >= 0, o.context_log_backoff[ci_miss.clip(min=0)], 0.0)
            todo = miss
        return out

    def dense_logprob(self, history) -> np.ndarray:
        """[V] ln Q(t | history) for every token; history: a sequence of token ids, newest last."""
        h = np.asarray(list(history)[-(self.max_order - 1):] if self.max_order > 1 else [], dtype=np.int64)
        tokens = np.arange(self.vocab_size, dtype=np.int64)
        return self.logprob(np.broadcast_to(h, (self.vocab_size, h.shape[0])), tokens)

    # ---- compilation into the kernel contract ---------------------------------------------------

    def compile(self, name: str, mode: str = "kn"):
        """The exact sparse form (module docstring): a CompiledStyle of per-order (token, delta) lists."""
        compiled = []
        for o in self.orders:
            n = o.order
            if n == 1:
                deltas = o.entry_logprob - self.floor
                compiled.append(CompiledOrder(1, np.zeros((1, 0), np.int64), o.context_offsets.astype(np.int64),
                                              o.entry_tokens.astype(np.int64), deltas))
                continue
            ci = o.entry_context()  # [E]
            lower = self.logprob(o.context_tokens[ci, 1:].astype(np.int64), o.entry_tokens)  # ln Q_{n-1}(t | c')
            deltas = o.entry_logprob - o.context_log_backoff[ci] - lower  # [E]
            sizes = np.diff(o.context_offsets)
            keep = sizes > 0  # contexts without entries only shift the row constant
            offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(sizes[keep])
            compiled.append(CompiledOrder(n, o.context_tokens[keep].astype(np.int64), offsets,
                                          o.entry_tokens.astype(np.int64), deltas))
        return CompiledStyle(name, mode, compiled)

    # ---- pruning --------------------------------------------------------------------------------

    def truncate(self, top_k: int | None) -> "BackoffModel":
        """Keep, for orders >= 2, each context's top_k entries by probability (ties: lower token id).

        Kept probabilities and every backoff weight are unchanged, so a kept (c, t) still gets its
        exact value; a dropped one backs off to b(c) Q_{n-1}. Order 1 is never truncated.
        """
        if top_k is None:
            return self
        orders = [self.orders[0]]
        for o in self.orders[1:]:
            ci = o.entry_context()  # [E]
            keep = np.ones(ci.shape[0], dtype=bool)
            big = np.diff(o.context_offsets) > top_k
            if big.any():  # only contexts with more than top_k entries need a selection
                rows = np.flatnonzero(big[ci])
                perm = rows[np.lexsort((o.entry_tokens[rows], -o.entry_logprob[rows], ci[rows]))]
                rank = np.arange(perm.size) - np.searchsorted(ci[perm], ci[perm], side="left")
                keep[perm[rank >= top_k]] = False
            kept = np.flatnonzero(keep)  # still in (context, token) order
            sizes = np.bincount(ci[kept], minlength=o.num_contexts)
            offsets = np.zeros(o.num_contexts + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(sizes)
            orders.append(BackoffOrder(o.order, o.context_tokens, o.context_log_backoff, offsets,
                                       o.entry_tokens[kept], o.entry_logprob[kept]))
        info = dict(self.info, top_k=int(top_k))
        return BackoffModel(orders, self.vocab_size, self.kind, info)

    # ---- storage in a style pack ----------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        out = {}
        for o in self.orders:
            p = f"backoff{o.order}."
            if o.order > 1:
                out[p + "context_tokens"] = o.context_tokens.astype(np.int32)
            out[p + "context_log_backoff"] = o.context_log_backoff.astype(np.float64)
            out[p + "context_offsets"] = o.context_offsets.astype(np.int64)
            out[p + "entry_tokens"] = o.entry_tokens.astype(np.int32)
            out[p + "entry_logprob"] = o.entry_logprob.astype(np.float64)
        return out

    def metadata(self) -> dict:
        return {"kind": self.kind, "orders": self.max_order, "info": self.info}

    @classmethod
    def from_tensors(cls, tensors: dict, meta: dict, vocab_size: int) -> "BackoffModel":
        """Rebuild and validate; raises ValueError/KeyError/TypeError naming the problem."""
        if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
            raise ValueError(f"backoff model kind {meta.get('kind') if isinstance(meta, dict) else meta!r}")
        orders = int(meta["orders"])
        if not 1 <= orders <= MAX_ORDER:
            raise ValueError(f"backoff model has {orders} orders")
        out = []
        for n in range(1, orders + 1):
            p = f"backoff{n}."
            ctx = tensors[p + "context_tokens"] if n > 1 else np.zeros((1, 0), np.int32)
            o = BackoffOrder(n, ctx, tensors[p + "context_log_backoff"], tensors[p + "context_offsets"],
                             tensors[p + "entry_tokens"], tensors[p + "entry_logprob"])
            check_order(o, vocab_size)
            out.append(o)
        return cls(out, vocab_size, meta["kind"], dict(meta.get("info") or {}))


def check_order(o: BackoffOrder, vocab: int) -> None:
    """Everything the lookups rely on: shapes, offsets, sorted unique keys, finite values."""
    n = o.order
    c = o.context_log_backoff.shape[0]
    if n == 1 and c != 1:
        raise ValueError(f"backoff order {n}: context_tokens shape {o.context_tokens.shape}")
    check_sparse_order(f"backoff order {n}", n, c, o.context_tokens, o.context_offsets, (o.entry_logprob,),
                       o.entry_tokens, vocab)
    for arr in (o.context_log_backoff, o.entry_logprob):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"backoff order {n}: non-finite log probability or backoff")
    if n > 1 and c > 1:
        keys = row_keys(o.context_tokens.astype(np.int64), bits_per_token(vocab))
        if not strictly_sorted(keys):
            raise ValueError(f"backoff order {n}: contexts not strictly sorted")
    if o.entry_tokens.shape[0] > 1:
        ci = np.repeat(np.arange(c, dtype=np.int64), np.diff(o.context_offsets))
        keys = ci * vocab + o.entry_tokens.astype(np.int64)
        if not np.all(keys[1:] > keys[:-1]):
            raise ValueError(f"backoff order {n}: entries not strictly sorted by token within a context")
