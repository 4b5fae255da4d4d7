"""Orders 4..6 end to end: counting (incl. multi-word keys of large vocabularies), the exact / paper /
kn deltas through the reference op against naive formulas, and train -> pack -> load -> steer."""
from collections import Counter

import numpy as np
import pytest
import torch

from test_kneser_ney import NaiveKN, context_tensor, softmax
from vllm_ngram_style.counting import bits_per_token
from vllm_ngram_style.kneser_ney import estimate_kneser_ney
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.pack import StylePack, default_weights, load_pack, save_pack
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.train import count_full, count_token_documents

K = 1e-3


def random_docs(rng, n_docs, vocab, alphabet=12, max_len=40):
    """Documents over a small random alphabet of ids spread over [0, vocab), so high orders repeat."""
    ids = rng.choice(vocab, size=alphabet, replace=False)
    p = 1.0 / np.arange(1, alphabet + 1) ** 1.2
    return [ids[rng.choice(alphabet, size=int(rng.integers(1, max_len)), p=p / p.sum())].astype(np.int32)
            for _ in range(n_docs)], ids


def naive_counts(docs, orders):
    full = {n: Counter() for n in range(1, orders + 1)}
    for d in docs:
        d = [int(x) for x in d]
        for n in range(1, orders + 1):
            for i in range(len(d) - n + 1):
                full[n][tuple(d[i:i + n])] += 1
    return full


@pytest.mark.parametrize("orders,vocab", [(4, 12), (5, 300), (6, 70_000), (6, 2_000_000)])
def test_counts_and_tables_match_naive(orders, vocab):
    rng = np.random.default_rng(orders + vocab)
    docs, _ = random_docs(rng, 60, vocab)
    if vocab > 1000:
        assert orders * bits_per_token(vocab) > 63  # the multi-word key path
    _, counts = count_full(docs, vocab, orders)
    full = naive_counts(docs, orders)
    for n in range(1, orders + 1):
        got = {tuple(int(x) for x in g): int(c) for g, c in zip(counts[n - 1].ngrams, counts[n - 1].counts)}
        assert got == dict(full[n])
    top_k = 3
    _, tables = count_token_documents(docs, vocab, orders, top_k)
    for t in tables[1:]:
        n = t.order
        assert t.context_tokens.shape[1] == n - 1
        for i, ctx in enumerate(t.context_tokens.tolist()):
            cont = {g[-1]: c for g, c in full[n].items() if list(g[:-1]) == ctx}
            assert t.context_total[i] == sum(cont.values())
            best = sorted(cont.items(), key=lambda tc: (-tc[1], tc[0]))[:top_k]
            s, e = t.context_offsets[i], t.context_offsets[i + 1]
            # which entries are kept is the contract; their order within a context is not
            assert sorted(zip(t.entry_tokens[s:e].tolist(), t.entry_counts[s:e].tolist())) == sorted(best)


def histories(rng, docs, rows, orders, ids):
    """Corpus-drawn (all orders matched), random over the alphabet (some matched), short ones."""
    out = []
    for r in range(rows):
        if r % 3 == 0:
            d = docs[rng.integers(len(docs))]
            end = int(rng.integers(1, len(d) + 1))
            out.append([int(x) for x in d[max(0, end - (orders - 1)):end]])
        elif r % 3 == 1:
            out.append([int(x) for x in rng.choice(ids, size=orders - 1)])
        else:
            out.append([int(x) for x in rng.choice(ids, size=int(rng.integers(0, orders - 1)))])
    return out


@pytest.mark.parametrize("orders,vocab", [(4, 40), (5, 500), (6, 70_000)])
def test_exact_paper_kn_deltas_at_high_orders(orders, vocab):
    rng = np.random.default_rng(orders)
    docs, ids = random_docs(rng, 150, vocab)
    top_k = 4
    counter, tables = count_token_documents(docs, vocab, orders, top_k)
    weights = default_weights(orders)
    pack = StylePack(tables, counter.unigram_counts, vocab, "fp", K, top_k, weights, {}, "s")
    full = naive_counts(docs, orders)
    by_ctx = {}
    for n in range(1, orders + 1):
        for g, c in full[n].items():
            by_ctx.setdefault((n, g[:-1]), Counter())[g[-1]] = c
    kn_model = estimate_kneser_ney(count_full(docs, vocab, orders)[1], vocab)
    pack.backoff = kn_model  # as train_pack(kneser_ney=True) stores it, untruncated here
    variants = [compile_style(pack, "exact"), compile_style(pack, "paper"), compile_style(pack, "kn")]
    assert [v.max_order for v in variants] == [orders] * 3
    rows = 24
    hist = histories(rng, docs, rows, orders, ids)
    z = rng.normal(size=(rows, vocab))
    lam = rng.uniform(0.1, 1.0, size=rows)
    variant = np.arange(rows) % 3
    got = torch.tensor(z)
    ReferenceSteering(variants).apply(got, torch.tensor(variant), torch.tensor(lam), context_tensor(hist, orders - 1))
    got = got.numpy()
    naive_kn = NaiveKN(docs, vocab, orders)
    for r, h in enumerate(hist):
        dense = np.zeros(vocab)  # exact: sum_n w_n log P_n(t | c_n) over matched orders, every token
        sparse = np.zeros(vocab)  # paper: the same, only on each context's top-K tokens
        for n in range(1, orders + 1):
            if len(h) < n - 1:
                continue
            ctx = tuple(h[len(h) - (n - 1):]) if n > 1 else ()
            cont = by_ctx.get((n, ctx))
            if cont is None:
                continue
            kept = dict(sorted(cont.items(), key=lambda tc: (-tc[1], tc[0]))[:top_k])
            total = sum(cont.values())
            logp = np.log((np.array([kept.get(t, 0) for t in range(vocab)]) + K) / (total + K * vocab))
            dense += weights[n - 1] * logp
            idx = list(kept)
            sparse[idx] += weights[n - 1] * logp[idx]
        if variant[r] == 0:
            np.testing.assert_allclose(softmax(got[r]), softmax(z[r] + lam[r] * dense), rtol=0, atol=1e-9)
        elif variant[r] == 1:
            np.testing.assert_allclose(got[r], z[r] + lam[r] * sparse, rtol=0, atol=1e-12)
        else:
            lp = kn_model.dense_logprob(h)
            assert np.ptp(got[r] - (z[r] + lam[r] * lp)) < 1e-9
            if vocab <= 500:
                np.testing.assert_allclose(lp, np.log(naive_kn.dense(h)), rtol=0, atol=1e-12)
            else:  # large V: every never-seen id shares one probability; the whole still sums to 1
                seen = np.isin(np.arange(vocab), ids)
                assert np.ptp(lp[~seen]) == 0
                assert abs(np.exp(lp[seen]).sum() + (~seen).sum() * np.exp(lp[~seen][0]) - 1) < 1e-12
                for t in ids[:4]:
                    assert lp[t] == pytest.approx(np.log(naive_kn.prob(
                        min(len(h), orders - 1) + 1, tuple(h[max(0, len(h) - (orders - 1)):]), int(t))), abs=1e-12)


def test_train_order_six_end_to_end(tmp_path, tiny_tokenizer_dir):
    from vllm_ngram_style.testing.tiny import sample_text
    from vllm_ngram_style.tokenizer import load_tokenizer
    from vllm_ngram_style.train import train_pack

    text = sample_text(120, seed=7)
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    pack, summary = train_pack(tiny_tokenizer_dir, [str(corpus)], orders=6, top_k=64, progress=False,
                               kneser_ney=True)
    assert pack.orders == 6 and len(summary.distinct_ngrams) == 6 and summary.stored_entries[5] > 0
    path = str(tmp_path / "six.stylepack")
    save_pack(pack, path)
    pack = load_pack(path)
    assert pack.orders == 6 and pack.backoff.max_order == 6
    tables = {}
    for t in pack.tables:
        for i in range(t.context_total.shape[0]):
            s, e = t.context_offsets[i], t.context_offsets[i + 1]
            tables[(t.order, tuple(t.context_tokens[i].tolist()) if t.order > 1 else ())] = (
                int(t.context_total[i]), dict(zip(t.entry_tokens[s:e].tolist(), t.entry_counts[s:e].tolist())))
    variants = [compile_style(pack, m) for m in ("exact", "paper", "kn")]
    op = ReferenceSteering(variants)
    assert op.max_order == 6
    ids = load_tokenizer(tiny_tokenizer_dir)(text.split("\n\n")[1], add_special_tokens=False)["input_ids"]
    hist = [ids[:i] for i in range(1, 13)]  # from 1 token (order 2 only) to full order-6 contexts
    rows, vocab = len(hist), pack.vocab_size
    width = vocab + 16  # the tiny model's logits are wider than its tokenizer
    z = np.random.default_rng(0).normal(size=(rows, width))
    variant = np.arange(rows) % 3
    got = torch.tensor(z)
    op.apply(got, torch.tensor(variant), torch.ones(rows, dtype=torch.float64), context_tensor(hist, 5))
    got = got.numpy()
    deepest = []
    for r, h in enumerate(hist):
        if variant[r] == 2:
            assert np.ptp(got[r, :vocab] - z[r, :vocab] - pack.backoff.dense_logprob(h)) < 1e-9
            continue
        want = z[r].copy()
        matched = 0
        for n in range(1, 7):
            ctx = tuple(h[len(h) - (n - 1):]) if n > 1 else ()
            if (n > 1 and len(h) < n - 1) or (n, ctx) not in tables:
                continue
            matched = n
            total, kept = tables[(n, ctx)]
            w = pack.weights[n - 1]
            for t, c in kept.items():
                want[t] += w * (np.log1p(c / K) if variant[r] == 0 else np.log((c + K) / (total + K * vocab)))
        deepest.append(matched)
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-9)
    assert max(deepest) == 6  # order-6 contexts really matched
