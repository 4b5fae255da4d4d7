"""The paper's metrics (arXiv 2601.16224), and repetition, for one generated token sequence.

All functions score the GENERATED tokens only; n-gram contexts are taken from the generation
itself (the first generated token is scored with the empty context, the second with one token of
context, ...), so a prompt's chat markup never matches or leaks into a score, and prompt-only
baselines (longer prompts) are scored on the same footing as steered runs.

Conventions taken from the style pack (the same tables the steering reads):
- P_n(t | c) = (C_n(c, t) + k) / (N_n(c) + k V), V = the pack's vocabulary size. For n >= 2, C_n
  comes from the pack's TOP-K TABLE of c: a continuation outside the top K of its context counts as
  0 there (N_n(c) still counts it); at K = 512 these tables hold 90-100% of the distinct n-grams of
  our corpora. For n = 1 we use the pack's UNTRUNCATED unigram counts: the order-1 table keeps only
  the 512 commonest tokens, and scoring every rarer word at k / (N + kV) ~ 1e-9 would let the
  share of rare words dominate the perplexity (truncated_unigrams=True restores the table).
- Order n is "matched" at a position when its n-1 context tokens are all present (inside the
  generation) and the context is stored in the pack. P_mix = sum_matched w_n P_n / sum_matched w_n;
  when no order with a positive weight matches, P_mix = 1 / V.
- Bigram-seen rate: a generated bigram (a, b) counts as seen when b is in the order-2 table of
  context (a). With top-K truncation this is a lower bound on "occurs in the corpus": a bigram whose
  count is below its context's K-th largest is not stored. Contexts with at most K distinct
  continuations (almost all, at K = 512) are exact.
- Unigram overlap: fraction of generated tokens among the corpus's 5000 most frequent tokens
  (pack.unigram_counts, untruncated; ties: lower token id first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..pack import StylePack

TOP_UNIGRAMS = 5000
LN2 = math.log(2.0)


class PackScorer:
    """Fast lookups into a pack's tables: per order, context -> row, and (row, token) -> count."""

    def __init__(self, pack: StylePack, top_unigrams: int = TOP_UNIGRAMS, truncated_unigrams: bool = False):
        self.pack = pack
        self.truncated_unigrams = truncated_unigrams
        self.vocab = int(pack.vocab_size)
        self.k = float(pack.smoothing_k)
        self.weights = [float(w) for w in pack.weights]
        self._ctx_index: list[dict] = []  # per order: tuple(context) -> context row
        self._entry_keys: list[np.ndarray] = []  # per order: sorted [E] int64 row * V + token
        self._entry_counts: list[np.ndarray] = []  # per order: [E] int64, aligned with the sorted keys
        for t in pack.tables:
            c = t.context_total.shape[0]
            ctx = t.context_tokens.reshape(c, t.order - 1)
            self._ctx_index.append({tuple(row): i for i, row in enumerate(ctx.tolist())})
            rows = np.repeat(np.arange(c, dtype=np.int64), np.diff(t.context_offsets))  # [E]
            keys = rows * self.vocab + t.entry_tokens.astype(np.int64)
            order = np.argsort(keys, kind="stable")
            self._entry_keys.append(keys[order])
            self._entry_counts.append(t.entry_counts.astype(np.int64)[order])
        counts = pack.unigram_counts.astype(np.int64)
        top = np.lexsort((np.arange(counts.size), -counts))[:top_unigrams]  # count desc, then id asc
        top = top[counts[top] > 0]
        self.top_unigrams = np.zeros(self.vocab, dtype=bool)  # [V]
        self.top_unigrams[top] = True

    def lookup(self, order: int, tokens: np.ndarray):
        """For every position i of tokens [T]: (matched [T] bool, C [T], N [T]) of order n with
        context tokens[i-n+1:i] and continuation tokens[i]."""
        t = np.asarray(tokens, dtype=np.int64)
        n_pos = t.shape[0]
        if order == 1 and not self.truncated_unigrams:
            uni = self.pack.unigram_counts
            inside = (t >= 0) & (t < uni.shape[0])
            counts = np.where(inside, uni[np.clip(t, 0, uni.shape[0] - 1)], 0).astype(np.int64)
            total = int(uni.sum())
            return np.full(n_pos, total > 0), counts, np.full(n_pos, total, dtype=np.int64)
        table = self.pack.tables[order - 1]
        row = np.full(n_pos, -1, dtype=np.int64)
        index = self._ctx_index[order - 1]
        m = order - 1
        seq = t.tolist()
        for i in range(m, n_pos):
            row[i] = index.get(tuple(seq[i - m:i]), -1)
        matched = row >= 0
        totals = np.where(matched, table.context_total[np.maximum(row, 0)], 0).astype(np.int64)
        counts = np.zeros(n_pos, dtype=np.int64)
        keys = self._entry_keys[order - 1]
        if matched.any() and keys.size:
            q = row[matched] * self.vocab + t[matched]
            pos = np.searchsorted(keys, q).clip(max=keys.size - 1)
            counts[matched] = np.where(keys[pos] == q, self._entry_counts[order - 1][pos], 0)
        return matched, counts, totals

    def mixture_logprob(self, tokens) -> np.ndarray:
        """[T] natural-log P_mix(x_i | x_<i) of each generated token."""
        t = np.asarray(tokens, dtype=np.int64)
        num = np.zeros(t.shape[0], dtype=np.float64)
        den = np.zeros(t.shape[0], dtype=np.float64)
        for n, w in enumerate(self.weights, 1):
            if w <= 0:
                continue
            matched, c, tot = self.lookup(n, t)
            p = (c + self.k) / (tot + self.k * self.vocab)
            num += np.where(matched, w * p, 0.0)
            den += np.where(matched, w, 0.0)
        mix = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0 / self.vocab)
        return np.log(mix)

    def mixture_dense(self, tokens, i: int) -> np.ndarray:
        """[V] float64 P_mix(. | tokens[:i]) over the whole vocabulary (same conventions as
        mixture_logprob, whose value at i is log of this vector's entry tokens[i])."""
        seq = [int(x) for x in tokens[:i]]
        num = np.zeros(self.vocab, dtype=np.float64)
        den = 0.0
        for n, w in enumerate(self.weights, 1):
            if w <= 0:
                continue
            if n == 1 and not self.truncated_unigrams:
                counts = self.pack.unigram_counts.astype(np.float64)
                total = counts.sum()
                if total <= 0:
                    continue
                p = (counts + self.k) / (total + self.k * self.vocab)
            else:
                if len(seq) < n - 1:
                    continue
                row = self._ctx_index[n - 1].get(tuple(seq[len(seq) - (n - 1):]) if n > 1 else (), -1)
                if row < 0:
                    continue
                t = self.pack.tables[n - 1]
                total = float(t.context_total[row])
                a, b = int(t.context_offsets[row]), int(t.context_offsets[row + 1])
                p = np.full(self.vocab, self.k / (total + self.k * self.vocab))
                p[t.entry_tokens[a:b]] = (t.entry_counts[a:b] + self.k) / (total + self.k * self.vocab)
            num += w * p
            den += w
        return num / den if den > 0 else np.full(self.vocab, 1.0 / self.vocab)

    def style_ppl(self, tokens) -> float:
        return ppl_from_logprobs(self.mixture_logprob(tokens))

    def unigram_overlap(self, tokens) -> float:
        t = np.asarray(tokens, dtype=np.int64)
        if t.size == 0:
            return float("nan")
        inside = (t >= 0) & (t < self.vocab)
        return float(np.mean(np.where(inside, self.top_unigrams[np.clip(t, 0, self.vocab - 1)], False)))

    def bigram_seen_rate(self, tokens) -> float:
        t = np.asarray(tokens, dtype=np.int64)
        if t.size < 2 or self.pack.orders < 2:
            return float("nan")
        matched, c, _ = self.lookup(2, t)
        return float(np.mean(c[1:] > 0))


def ppl_from_logprobs(logprobs) -> float:
    """exp(-mean natural-log probability); nan for an empty sequence."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return float(math.exp(-lp.mean())) if lp.size else float("nan")


def repetition_rate(tokens, n: int = 4) -> float:
    """Fraction of a sequence's n-grams that repeat an earlier n-gram of the same sequence:
    1 - distinct / total. 0 for no repeats; nan when the sequence has no n-gram."""
    t = list(tokens)
    total = len(t) - n + 1
    if total <= 0:
        return float("nan")
    distinct = len({tuple(t[i:i + n]) for i in range(total)})
    return 1.0 - distinct / total


def js_divergence_bits(p_logits, q_logits):
    """Per-row Jensen-Shannon divergence in bits between softmax(p_logits) and softmax(q_logits).

    p_logits, q_logits: [R, V] torch tensors (any float dtype; computed in float64; -inf allowed).
    Returns [R] float64 tensor, in [0, 1].
    """
    import torch

    lp = torch.log_softmax(p_logits.double(), -1)  # [R, V]
    lq = torch.log_softmax(q_logits.double(), -1)  # [R, V]
    lm = torch.logaddexp(lp, lq) - LN2  # [R, V] log of the midpoint distribution
    # p log(p/m) with 0 log 0 = 0 (masked tokens have p = 0)
    kl_p = torch.where(lp > -math.inf, lp.exp() * (lp - lm), torch.zeros_like(lp)).sum(-1)
    kl_q = torch.where(lq > -math.inf, lq.exp() * (lq - lm), torch.zeros_like(lq)).sum(-1)
    js = (0.5 * (kl_p + kl_q) / LN2).clamp(min=0.0)
    same = (p_logits == q_logits).all(-1)  # untouched rows: exactly 0, not rounding noise
    return torch.where(same, torch.zeros_like(js), js)


@dataclass
class SequenceMetrics:
    """Metrics of one generation (one prompt, one configuration)."""

    tokens: int
    style_ppl: float
    base_ppl: float
    unigram_overlap: float
    bigram_seen: float
    rep4: float
    js_bits: float = float("nan")  # mean over the sequence's steps; nan when not computed

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def score_sequence(scorer: PackScorer, tokens, base_logprobs, js_per_step=None) -> SequenceMetrics:
    """tokens: [T] generated ids; base_logprobs: [T] log p of each under the unsteered model;
    js_per_step: [T] JS divergence (bits) at each step, or None."""
    js = float(np.mean(js_per_step)) if js_per_step is not None and len(js_per_step) else float("nan")
    return SequenceMetrics(len(tokens), scorer.style_ppl(tokens), ppl_from_logprobs(base_logprobs),
                           scorer.unigram_overlap(tokens), scorer.bigram_seen_rate(tokens),
                           repetition_rate(tokens, 4), js)
