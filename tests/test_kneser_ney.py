"""Interpolated modified Kneser-Ney: the estimator against a naive dict-based implementation of the
definitions, normalisation, and the compiled sparse deltas against dense log P_KN (float64)."""
import os
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from vllm_ngram_style.errors import StylePackError
from vllm_ngram_style.kneser_ney import (FALLBACK_DISCOUNTS, counts_from_tables, estimate_kneser_ney,
                                         modified_kn_discounts)
from vllm_ngram_style.modes import available_modes, compile_style
from vllm_ngram_style.pack import StylePack, default_weights, load_pack, save_pack
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.train import count_full, count_token_documents


def naive_discounts(adj):
    nk = [sum(1 for a in adj.values() if a == k) for k in (1, 2, 3, 4)]
    if min(nk) == 0:
        return FALLBACK_DISCOUNTS
    n1, n2, n3, n4 = nk
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return d if all(0 < x <= k for k, x in enumerate(d, 1)) else FALLBACK_DISCOUNTS


class NaiveKN:
    """Interpolated modified KN straight from the definitions, with Counters and recursion."""

    def __init__(self, docs, vocab, orders):
        self.vocab, self.orders = vocab, orders
        counts = {n: Counter() for n in range(1, orders + 2)}
        starts = {n: set() for n in range(1, orders + 1)}
        for d in docs:
            d = [int(x) for x in d]
            for n in range(1, orders + 1):
                for i in range(len(d) - n + 1):
                    counts[n][tuple(d[i:i + n])] += 1
                if len(d) >= n:
                    starts[n].add(tuple(d[:n]))  # w opens a document: a virtual <s> left neighbour
        self.adj, self.disc, self.by_ctx = {}, {}, {}
        for n in range(1, orders + 1):
            if n == orders:
                adj = dict(counts[n])
            else:
                left = {}
                for g in counts[n + 1]:
                    left.setdefault(g[1:], set()).add(g[0])
                adj = {w: len(left.get(w, ())) + (w in starts[n]) for w in counts[n]}
            self.adj[n], self.disc[n] = adj, naive_discounts(adj)
            for w, a in adj.items():
                self.by_ctx.setdefault((n, w[:-1]), {})[w[-1]] = a

    def prob(self, n, ctx, t):
        if n == 0:
            return 1.0 / self.vocab
        lower = self.prob(n - 1, ctx[1:], t)
        seen = self.by_ctx.get((n, ctx))
        if not seen:
            return lower
        d = self.disc[n]
        total = sum(seen.values())
        gamma = sum(d[min(a, 3) - 1] for a in seen.values()) / total
        a = seen.get(t, 0)
        return (max(a - d[min(a, 3) - 1], 0) if a else 0) / total + gamma * lower

    def dense(self, history):
        m = min(len(history), self.orders - 1)
        ctx = tuple(history[len(history) - m:]) if m else ()
        return np.array([self.prob(m + 1, ctx, t) for t in range(self.vocab)])


def random_docs(rng, n_docs, vocab, used=None, max_len=30):
    used = vocab if used is None else used  # ids >= used never occur: the uniform floor matters
    p = 1.0 / np.arange(1, used + 1) ** 1.1
    return [rng.choice(used, size=int(rng.integers(1, max_len)), p=p / p.sum()).astype(np.int32)
            for _ in range(n_docs)]


def random_histories(rng, docs, rows, orders, vocab):
    """Corpus-drawn (matched), random (mostly unseen contexts), short, and empty histories."""
    out = []
    for r in range(rows):
        kind = r % 4
        if kind == 0:
            d = docs[rng.integers(len(docs))]
            end = int(rng.integers(1, len(d) + 1))
            out.append([int(x) for x in d[max(0, end - (orders - 1)):end]])
        elif kind == 1:
            out.append([int(x) for x in rng.integers(0, vocab, size=orders - 1)])
        elif kind == 2:
            out.append([int(x) for x in rng.integers(0, vocab, size=int(rng.integers(0, orders)))])
        else:
            out.append([])
    return out


def context_tensor(hist, width):
    ctx = torch.full((len(hist), width), -1, dtype=torch.int64)
    for r, h in enumerate(hist):
        h = h[max(0, len(h) - width):] if width else []
        if h:
            ctx[r, width - len(h):] = torch.tensor(h)
    return ctx


CASES = [(0, 9, 9, 1, 30), (1, 12, 12, 2, 60), (2, 15, 10, 3, 80), (3, 20, 14, 4, 120),
         (4, 11, 11, 5, 60), (5, 8, 8, 6, 200), (6, 30, 30, 3, 400), (7, 6, 6, 3, 3)]


@pytest.mark.parametrize("seed,vocab,used,orders,n_docs", CASES)
def test_estimator_matches_naive_definitions(seed, vocab, used, orders, n_docs):
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, n_docs, vocab, used)
    _, counts = count_full(docs, vocab, orders)
    model = estimate_kneser_ney(counts, vocab)
    naive = NaiveKN(docs, vocab, orders)
    for n in range(1, orders + 1):
        assert model.info["discounts"][n - 1] == pytest.approx(list(naive.disc[n]), abs=1e-15)
    for h in random_histories(rng, docs, 16, orders, vocab):
        np.testing.assert_allclose(model.dense_logprob(h), np.log(naive.dense(h)), rtol=0, atol=1e-12)


def test_both_discount_paths_are_exercised():
    """The cases above hit real estimates and the fallback (else the naive comparison proves less)."""
    used = set()
    for seed, vocab, u, orders, n_docs in CASES:
        rng = np.random.default_rng(seed)
        _, counts = count_full(random_docs(rng, n_docs, vocab, u), vocab, orders)
        used.update(estimate_kneser_ney(counts, vocab).info["discount_fallback"])
    assert used == {True, False}


@pytest.mark.parametrize("seed,orders", [(0, 2), (1, 3), (2, 5)])
def test_probabilities_sum_to_one(seed, orders):
    rng = np.random.default_rng(seed)
    vocab = 40
    docs = random_docs(rng, 150, vocab, used=25)  # 15 ids never seen: they get the floor
    _, counts = count_full(docs, vocab, orders)
    model = estimate_kneser_ney(counts, vocab)
    for h in random_histories(rng, docs, 24, orders, vocab):
        p = np.exp(model.dense_logprob(h))
        assert abs(p.sum() - 1.0) < 1e-12
        assert np.all(p > 0)
    floor = np.exp(model.floor)
    assert np.exp(model.dense_logprob([]))[30] == pytest.approx(floor, rel=1e-14)


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def check_compiled_equals_dense(model, compiled, docs, rng, rows=32, extra_width=0):
    vocab, orders = model.vocab_size, model.max_order
    hist = random_histories(rng, docs, rows, orders, vocab)
    width = vocab + extra_width
    z = rng.normal(size=(rows, width)) * 3
    lam = rng.uniform(0.05, 1.0, size=rows)
    lam[::3] = 1.0
    got = torch.tensor(z)
    op = ReferenceSteering([compiled])
    variant = torch.zeros(rows, dtype=torch.int64)
    variant[7] = -1  # an unsteered row stays bit for bit
    op.apply(got, variant, torch.tensor(lam), context_tensor(hist, orders - 1))
    got = got.numpy()
    assert np.array_equal(got[7], z[7])
    for r, h in enumerate(hist):
        if r == 7:
            continue
        want = z[r, :vocab] + lam[r] * model.dense_logprob(h)
        np.testing.assert_allclose(softmax(got[r, :vocab]), softmax(want), rtol=0, atol=1e-9)
        # and not merely close in probability: equal up to one constant in logit space
        assert np.ptp(got[r, :vocab] - want) < 1e-9
        # logits beyond the pack's vocabulary are never written (they rank like a never-seen id)
        assert np.array_equal(got[r, vocab:], z[r, vocab:])


@pytest.mark.parametrize("seed,vocab,used,orders", [(0, 14, 14, 2), (1, 25, 18, 3), (2, 16, 16, 4), (3, 10, 10, 6)])
def test_compiled_deltas_equal_dense_log_p(seed, vocab, used, orders):
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, 120, vocab, used)
    _, counts = count_full(docs, vocab, orders)
    model = estimate_kneser_ney(counts, vocab)
    compiled = model.compile("s")
    assert compiled.max_order == orders and compiled.mode == "kn"
    # The matched orders of any row form a prefix 1..m: a stored context's suffix is stored too.
    for n in range(3, orders + 1):
        lower = {tuple(c) for c in compiled.orders[n - 2].context_tokens.tolist()}
        assert all(tuple(c[1:]) in lower for c in compiled.orders[n - 1].context_tokens.tolist())
    check_compiled_equals_dense(model, compiled, docs, rng, extra_width=3)


def test_truncated_model_is_compiled_exactly():
    rng = np.random.default_rng(11)
    vocab, orders = 12, 3
    docs = random_docs(rng, 200, vocab)
    _, counts = count_full(docs, vocab, orders)
    full = estimate_kneser_ney(counts, vocab)
    cut = estimate_kneser_ney(counts, vocab, top_k=2)
    assert cut.info["top_k"] == 2
    assert cut.orders[0].entry_tokens.shape == full.orders[0].entry_tokens.shape  # order 1 never truncated
    for o_full, o_cut in zip(full.orders[1:], cut.orders[1:]):
        assert np.diff(o_cut.context_offsets).max() == 2 < np.diff(o_full.context_offsets).max()
        # kept entries keep their exact KN probability, and they are the most probable ones
        rows_full, rows_cut = {}, {}
        for o, rows in ((o_full, rows_full), (o_cut, rows_cut)):
            for c, t, lp in zip(o.entry_context().tolist(), o.entry_tokens.tolist(), o.entry_logprob.tolist()):
                rows.setdefault(c, {})[t] = lp
        assert rows_cut.keys() == rows_full.keys()
        for c, row in rows_full.items():
            best = sorted(row.items(), key=lambda tl: (-tl[1], tl[0]))[:2]  # ties: lower token id
            assert rows_cut[c] == dict(best)  # the same tokens, with their exact probabilities
    h = [int(x) for x in docs[0][:2]]
    assert not np.allclose(cut.dense_logprob(h), full.dense_logprob(h))  # truncation does change P
    check_compiled_equals_dense(cut, cut.compile("s"), docs, rng)


def test_discount_formula_and_fallbacks():
    d, fb = modified_kn_discounts([100, 40, 20, 10])
    y = 100 / 180
    assert not fb and d == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 20 / 40, 3 - 4 * y * 10 / 20))
    assert modified_kn_discounts([5, 0, 1, 1]) == (FALLBACK_DISCOUNTS, True)  # a zero count-of-counts
    assert modified_kn_discounts([10, 1, 100, 1]) == (FALLBACK_DISCOUNTS, True)  # D2 < 0
    # a corpus too small for any estimate still gives a proper, finite model
    _, counts = count_full([np.array([1, 2, 3], np.int32)], 5, 3)
    model = estimate_kneser_ney(counts, 5)
    assert model.info["discount_fallback"] == [True, True, True]
    for h in ([], [1], [1, 2], [4, 4]):
        p = np.exp(model.dense_logprob(h))
        assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-12


def test_no_tokens_is_a_clear_error():
    from vllm_ngram_style.counting import OrderCounts

    with pytest.raises(StylePackError, match="at least one"):
        estimate_kneser_ney([OrderCounts(1, np.zeros((0, 1), np.int32), np.zeros(0, np.int64))], 5)


def random_count_pack(rng, vocab, orders, top_k, n_docs=150):
    docs = random_docs(rng, n_docs, vocab)
    counter, tables = count_token_documents(docs, vocab, orders, top_k)
    pack = StylePack(tables, counter.unigram_counts, vocab, "fp-test", 1e-3, top_k, default_weights(orders), {}, "s")
    return pack, docs


def test_kn_from_complete_count_tables_is_exact():
    """A pack without KN tables: mode kn estimates KN from its counts, exactly when none was truncated."""
    rng = np.random.default_rng(5)
    vocab, orders = 15, 4
    pack, docs = random_count_pack(rng, vocab, orders, top_k=vocab)
    counts, complete = counts_from_tables(pack)
    assert complete and pack.backoff is None
    _, full_counts = count_full(docs, vocab, orders)
    want = estimate_kneser_ney(full_counts, vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = compile_style(pack, "kn")
    ref = want.compile("s")
    for a, b in zip(compiled.orders, ref.orders):
        np.testing.assert_array_equal(a.context_tokens, b.context_tokens)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.deltas, b.deltas, rtol=0, atol=1e-12)


def test_kn_from_truncated_count_tables_warns_and_stays_consistent():
    rng = np.random.default_rng(6)
    vocab, orders = 15, 3
    pack, docs = random_count_pack(rng, vocab, orders, top_k=2)
    counts, complete = counts_from_tables(pack)
    assert not complete
    with pytest.warns(UserWarning, match="approximates"):
        compiled = compile_style(pack, "kn")
    model = estimate_kneser_ney(counts, vocab)  # the approximate model, compiled exactly
    check_compiled_equals_dense(model, compiled, docs, rng)


def test_mode_registry():
    assert "kn" in available_modes()
    rng = np.random.default_rng(0)
    pack, _ = random_count_pack(rng, 9, 2, top_k=9)
    assert compile_style(pack, "kn", name="x").name == "x"


def test_trained_pack_roundtrip(tmp_path, tiny_tokenizer_dir):
    from vllm_ngram_style.testing.tiny import sample_text
    from vllm_ngram_style.train import train_pack

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text(150, seed=3))
    pack, _ = train_pack(tiny_tokenizer_dir, [str(corpus)], orders=4, top_k=512, progress=False, kneser_ney=True)
    plain, _ = train_pack(tiny_tokenizer_dir, [str(corpus)], orders=4, top_k=512, progress=False)
    assert pack.backoff is not None and plain.backoff is None
    path, plain_path = str(tmp_path / "kn.stylepack"), str(tmp_path / "plain.stylepack")
    save_pack(pack, path)
    save_pack(plain, plain_path)
    loaded, loaded_plain = load_pack(path), load_pack(plain_path)
    assert loaded_plain.backoff is None and "backoff" not in loaded_plain.metadata()
    assert loaded.metadata()["backoff"]["kind"] == "kneser-ney"
    for a, b in zip(pack.backoff.orders, loaded.backoff.orders):
        for f in ("context_tokens", "context_log_backoff", "context_offsets", "entry_tokens", "entry_logprob"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    # stored (from full counts) and derived (from the untruncated count tables) KN agree
    got, derived = compile_style(loaded, "kn"), compile_style(loaded_plain, "kn")
    for a, b in zip(got.orders, derived.orders):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.deltas, b.deltas, rtol=0, atol=1e-12)
    # the other modes are unchanged by the extra tables
    for mode in ("exact", "paper"):
        for a, b in zip(compile_style(loaded, mode).orders, compile_style(loaded_plain, mode).orders):
            np.testing.assert_array_equal(a.deltas, b.deltas)


def test_inconsistent_backoff_tables_are_rejected(tmp_path):
    rng = np.random.default_rng(1)
    pack, docs = random_count_pack(rng, 10, 3, top_k=10)
    _, counts = count_full(docs, 10, 3)
    model = estimate_kneser_ney(counts, 10)
    breakers = {
        "non-finite": lambda m: m.orders[1].entry_logprob.__setitem__(0, np.nan),
        "not strictly sorted": lambda m: m.orders[2].entry_tokens.__setitem__(slice(0, 2), [5, 5]),
        "outside the vocabulary": lambda m: m.orders[1].entry_tokens.__setitem__(0, 10),
        "offsets": lambda m: m.orders[1].context_offsets.__setitem__(1, 10 ** 6),
    }
    for why, breaker in breakers.items():
        bad = estimate_kneser_ney(counts, 10)
        breaker(bad)
        pack.backoff = bad
        path = str(tmp_path / "bad.stylepack")
        save_pack(pack, path)  # a valid checksum over invalid contents
        with pytest.raises(StylePackError, match="inconsistent contents"):
            load_pack(path)
    pack.backoff = model
    save_pack(pack, path)
    assert load_pack(path).backoff is not None
    os.remove(path)


def test_cli_train_kneser_ney_and_info(tmp_path, tiny_tokenizer_dir, capsys):
    import json

    from vllm_ngram_style.cli import main
    from vllm_ngram_style.testing.tiny import sample_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text(60, seed=1))
    out = str(tmp_path / "kn.stylepack")
    assert main(["train", "--tokenizer", tiny_tokenizer_dir, "--corpus", str(corpus), "--out", out,
                 "--orders", "5", "--kneser-ney", "--quiet"]) == 0
    pack = load_pack(out)
    assert pack.backoff is not None and pack.backoff.max_order == 5
    capsys.readouterr()
    assert main(["info", out]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["backoff"]["kind"] == "kneser-ney" and len(meta["backoff"]["info"]["discounts"]) == 5
