"""Interpolated modified Kneser-Ney (Chen & Goodman 1998) over token ids, and the steering mode "kn".

Orders 1..N. For order n, each n-gram w = (c, t) has an adjusted count a(w):
- n = N: its count C(w);
- n < N: its continuation count N1+(. w), the number of distinct tokens seen right before w, plus
  one if w also occurs at the start of a document (a virtual <s> left neighbour; KenLM does the
  same with its real <s>). The number of start occurrences is C(w) - sum_x C(x w), exact from the
  full counts, since no n-gram crosses a document boundary.
Three discounts per order from the counts-of-counts n_k = #{w : a(w) = k} of that order:
  Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3.
Fallback: when some n_k (k = 1..4) is zero or some D_k falls outside (0, k] (small or unusual
corpora), that order uses KenLM's --discount_fallback values (0.5, 1.0, 1.5); ``info`` records it.
Every D > 0 keeps each backoff weight positive, so every log probability is finite.
  P_n(t | c) = (a(c t) - D(a(c t))) / S(c) + gamma(c) P_{n-1}(t | c'),   S(c) = sum_t a(c t),
  gamma(c) = sum_t D(a(c t)) / S(c) = (D1 N1(c.) + D2 N2(c.) + D3+ N3+(c.)) / S(c),
  P_n(t | c) = P_{n-1}(t | c') for a context never followed by anything, and
  P_1(t) = (a(t) - D(a(t))) / S + gamma / V: the unigram level interpolates with the uniform
  distribution over the pack's whole vocabulary V, so a token never seen gets gamma / V (the floor).
For a token t not seen after c, P_n(t | c) = gamma(c) P_{n-1}(t | c'): interpolated KN is a backoff
model with entries p_n(c, t) = P_n(t | c) for seen n-grams and backoff weights b_n(c) = gamma(c),
compiled exactly (up to a per-row constant) by backoff.BackoffModel.compile. The unigram level
becomes order-1 deltas ln P_1(t) - ln(gamma / V) for every token seen in the corpus.

Exactness: ``estimate_kneser_ney`` from the full counts (training with kneser_ney=True) gives
exact probabilities, float64; the pack then keeps, for orders >= 2, each context's top_k entries by
probability (``BackoffModel.truncate``): kept entries exact, dropped ones backed off to
gamma(c) P_{n-1}(t | c'). Order 1 is never truncated. A pack trained without the KN tables gets KN
estimated at compile time from its stored top-K count tables (``counts_from_tables``): exact when no
context of orders >= 2 was truncated (every context's kept counts sum to its total), otherwise an
approximation (the truncated n-grams are treated as unseen; missing suffixes get the summed counts
of their extensions as a lower bound) and a warning says so.
"""
from __future__ import annotations

import warnings

import numpy as np

from .backoff import BackoffModel, BackoffOrder, find_rows, row_keys, strictly_sorted
from .counting import OrderCounts, bits_per_token
from .errors import StylePackError

MODE = "kn"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback defaults


def modified_kn_discounts(counts_of_counts) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from n1..n4, and whether the fallback was used."""
    n1, n2, n3, n4 = (float(x) for x in counts_of_counts)
    if min(n1, n2, n3, n4) <= 0:
        return FALLBACK_DISCOUNTS, True
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < dk <= k for k, dk in enumerate(d, 1)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def _sorted_counts(c: OrderCounts, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One order's n-grams [U, n] int64, counts [U] int64 and row keys [U], lexicographically sorted."""
    grams = np.asarray(c.ngrams, dtype=np.int64).reshape(-1, c.order)
    cnt = np.asarray(c.counts, dtype=np.int64)
    keep = cnt > 0
    grams, cnt = grams[keep], cnt[keep]
    keys = row_keys(grams, bits)
    if not strictly_sorted(keys):
        perm = np.argsort(keys, kind="stable")
        grams, cnt, keys = grams[perm], cnt[perm], keys[perm]
        if not strictly_sorted(keys):
            raise ValueError(f"order {c.order}: duplicate n-grams in the counts")
    return grams, cnt, keys


def estimate_kneser_ney(counts: list[OrderCounts], vocab_size: int, top_k: int | None = None) -> BackoffModel:
    """Interpolated modified KN from every distinct n-gram of orders 1..N with its count.

    counts[n-1]: order n (as NgramCounter.finish returns). Every suffix of an n-gram must be an
    (n-1)-gram of the counts (true of any real corpus count). top_k: see BackoffModel.truncate.
    """
    big_n = len(counts)
    bits = bits_per_token(vocab_size)
    sorted_ = [_sorted_counts(c, bits) for c in counts]
    if sorted_[0][0].shape[0] == 0:
        raise StylePackError("Kneser-Ney needs at least one counted token")
    if sorted_[0][0].max() >= vocab_size:
        raise StylePackError("Kneser-Ney: token id outside the vocabulary")
    # suffix[n-1][i]: index among the (n-1)-grams of the suffix of n-gram i (n >= 2)
    suffix: list[np.ndarray | None] = [None]
    for n in range(2, big_n + 1):
        grams = sorted_[n - 1][0]
        idx = find_rows(sorted_[n - 2][2], row_keys(grams[:, 1:], bits))
        if np.any(idx < 0):
            raise ValueError(f"an order-{n} n-gram's suffix is missing from the order-{n - 1} counts")
        suffix.append(idx)

    adjusted = []
    for n in range(1, big_n + 1):
        raw = sorted_[n - 1][1]
        if n == big_n:
            adjusted.append(raw)
            continue
        idx, longer = suffix[n], sorted_[n][1]
        left = np.bincount(idx, minlength=raw.shape[0])  # N1+(. w)
        followed = np.bincount(idx, weights=longer, minlength=raw.shape[0])  # sum_x C(x w), exact below 2^53
        adjusted.append(left + (raw > followed))  # + 1 if w also starts a document

    orders, info = [], {"discounts": [], "discount_fallback": [], "counts_of_counts": []}
    prob_prev = None
    for n in range(1, big_n + 1):
        grams, a = sorted_[n - 1][0], adjusted[n - 1]
        nk = [int(np.count_nonzero(a == k)) for k in (1, 2, 3, 4)]
        d, fallback = modified_kn_discounts(nk)
        info["discounts"].append([float(x) for x in d])
        info["discount_fallback"].append(bool(fallback))
        info["counts_of_counts"].append(nk)
        disc = np.asarray(d, dtype=np.float64)[np.minimum(a, 3) - 1]  # [U] D(a(w))
        if n == 1:
            ctx_id = np.zeros(a.shape[0], dtype=np.int64)
            starts = np.zeros(1, dtype=np.int64)
        else:
            new_ctx = np.ones(a.shape[0], dtype=bool)
            new_ctx[1:] = np.any(grams[1:, :-1] != grams[:-1, :-1], axis=1)
            starts = np.flatnonzero(new_ctx)
            ctx_id = np.cumsum(new_ctx) - 1
        n_ctx = starts.shape[0]
        total = np.bincount(ctx_id, weights=a.astype(np.float64), minlength=n_ctx)  # S(c) > 0
        gamma = np.bincount(ctx_id, weights=disc, minlength=n_ctx) / total  # [C]
        lower = 1.0 / vocab_size if n == 1 else prob_prev[suffix[n - 1]]  # P_{n-1}(t | c')
        prob = (a - disc) / total[ctx_id] + gamma[ctx_id] * lower  # [U]
        offsets = np.zeros(n_ctx + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(ctx_id, minlength=n_ctx))
        if n == 1:
            ctx_tokens, log_b = np.zeros((1, 0), np.int32), np.log(gamma / vocab_size)  # the floor
        else:
            ctx_tokens, log_b = grams[starts, :-1].astype(np.int32), np.log(gamma)
        orders.append(BackoffOrder(n, ctx_tokens, log_b, offsets, grams[:, -1].astype(np.int32), np.log(prob)))
        prob_prev = prob
    return BackoffModel(orders, vocab_size, "kneser-ney", info).truncate(top_k)


def counts_from_tables(pack) -> tuple[list[OrderCounts], bool]:
    """Rebuild per-order counts from a pack's top-K count tables (order 1 from its full unigram
    counts). Returns (counts, complete): complete is True when no context of orders >= 2 lost an
    entry to truncation, and then the counts are exactly the corpus's."""
    bits = bits_per_token(pack.vocab_size)
    uni = np.flatnonzero(pack.unigram_counts)
    grams = [uni[:, None].astype(np.int64)]
    cnts = [pack.unigram_counts[uni].astype(np.int64)]
    complete = True
    for t in pack.tables[1:]:
        c = t.context_total.shape[0]
        ci = np.repeat(np.arange(c), np.diff(t.context_offsets))
        kept = np.bincount(ci, weights=t.entry_counts.astype(np.float64), minlength=c)
        complete &= bool(np.all(kept == t.context_total))
        g = np.concatenate([t.context_tokens.reshape(c, t.order - 1)[ci].astype(np.int64),
                            t.entry_tokens[:, None].astype(np.int64)], axis=1)
        perm = np.argsort(row_keys(g, bits), kind="stable")
        grams.append(g[perm])
        cnts.append(t.entry_counts[perm].astype(np.int64))
    # Truncation can drop an n-gram whose extension was kept: add it back with the summed counts of
    # its kept extensions (a lower bound of its count), from the top order down.
    for n in range(len(grams) - 1, 0, -1):
        suf = grams[n][:, 1:]
        keys = row_keys(grams[n - 1], bits)
        skeys = row_keys(suf, bits)
        missing = find_rows(keys, skeys) < 0
        if missing.any():
            mkeys, inverse = np.unique(skeys[missing], return_inverse=True)
            first = np.unique(inverse, return_index=True)[1]
            add_g = suf[missing][first]
            add_c = np.bincount(inverse, weights=cnts[n][missing]).astype(np.int64)
            g = np.concatenate([grams[n - 1], add_g])
            cc = np.concatenate([cnts[n - 1], add_c])
            perm = np.argsort(row_keys(g, bits), kind="stable")
            grams[n - 1], cnts[n - 1] = g[perm], cc[perm]
    return [OrderCounts(n, g, c) for n, (g, c) in enumerate(zip(grams, cnts), 1)], complete


def kn_model(pack) -> BackoffModel:
    """The pack's stored backoff model (KN from training, or an imported ARPA model); else KN
    estimated from its count tables (see the module docstring for when that is exact)."""
    if getattr(pack, "backoff", None) is not None:
        return pack.backoff
    counts, complete = counts_from_tables(pack)
    if not complete:
        warnings.warn(f"style pack {pack.name!r} has no Kneser-Ney tables and top-K truncated counts: mode "
                      "'kn' approximates KN from the kept counts; retrain with --kneser-ney for exact KN",
                      stacklevel=2)
    return estimate_kneser_ney(counts, pack.vocab_size)


def compile_kn(pack, name: str):
    """Mode "kn": z' = z + lambda ln P(t | c) of the pack's backoff model, up to a per-row constant."""
    return kn_model(pack).compile(name, MODE)
