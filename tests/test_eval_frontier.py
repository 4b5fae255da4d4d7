"""The corpus-text anchor and the style/fluency frontier table, against hand-computed answers."""
import math

import numpy as np
import pytest
import torch

from vllm_ngram_style.evaluation.anchor import corpus_passages, score_passages, summarise
from vllm_ngram_style.evaluation.frontier import anchor_ratios, frontier_rows, markdown_section, plot_frontier
from vllm_ngram_style.evaluation.metrics import PackScorer
from vllm_ngram_style.evaluation.prompts import Prompt
from vllm_ngram_style.evaluation.report import aggregate

from helpers import random_pack


def test_corpus_passages_start_at_evenly_spaced_documents(tiny_tokenizer_dir, tmp_path):
    from vllm_ngram_style.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    docs = [f"doc{i} " + "alpha beta gamma " * (i % 3 + 1) for i in range(20)]
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(docs) + "\n")
    paras = tmp_path / "paras.txt"
    paras.write_text("\n\n".join(docs) + "\n")
    for path, sep in ((lines, "\n"), (paras, "\n\n")):
        got = corpus_passages(tok, str(path), "auto", 12, 4)
        assert len(got) == 4
        for i, ids in enumerate(got):
            start = int((i + 0.5) * 20 / 4)  # documents 2, 7, 12, 17
            want = list(tok(sep.join(docs[start:]), add_special_tokens=False).input_ids)[:12]
            assert ids == want
    # near the end of the corpus a passage is shorter than asked, never padded
    short = corpus_passages(tok, str(lines), "line", 10_000, 2)
    assert 0 < len(short[1]) < len(short[0])


class _Forward:
    """A fake model: fixed random logits per position, so the expected log-probs are known."""

    def __init__(self, vocab):
        self.vocab = vocab

    def logits(self, prompt_ids, tokens):
        g = torch.Generator().manual_seed(len(prompt_ids))
        return torch.randn(len(tokens), self.vocab, generator=g)


def test_score_passages_matches_direct_computation():
    rng = np.random.default_rng(3)
    pack, docs = random_pack(rng, 40, orders=3, top_k=6)
    scorer = PackScorer(pack)
    passages = [[int(x) for x in docs[0][:9]], [int(x) for x in docs[1][:7]], [int(x) for x in docs[2][:5]]]
    prompt_ids = [[1, 2, 3], [4, 5]]
    prompts = [Prompt("a", "narrative", "x"), Prompt("b", "dialogue", "y")]
    fwd = _Forward(pack.vocab_size)
    recs = score_passages("c", passages, prompt_ids, fwd, scorer, prompts)
    assert [r["prompt_id"] for r in recs] == ["a", "b", "a"]  # passage i answers prompt i mod P
    for r, ids, p in zip(recs, passages, [0, 1, 0]):
        z = fwd.logits(prompt_ids[p], ids).double()
        lp = [float(torch.log_softmax(z[t], -1)[ids[t]]) for t in range(len(ids))]
        assert r["base_ppl"] == pytest.approx(math.exp(-sum(lp) / len(lp)), rel=1e-6)
        assert r["style_ppl"] == pytest.approx(scorer.style_ppl(ids))
        assert r["tokens"] == len(ids) and r["family"] == "corpus text"
    s = summarise(recs)["c"]
    assert s["n"] == 3 and s["base_ppl_median"] == pytest.approx(sorted(r["base_ppl"] for r in recs)[1])


def _rec(dec, fam, lam, style, base, rep, pid="p0"):
    return {"corpus": "c", "decoding": dec, "family": fam, "lambda": lam, "prompt_id": pid, "tokens": 10,
            "style_ppl": style, "base_ppl": base, "rep4": rep, "js_bits": 0.0, "unigram_overlap": 0.5,
            "bigram_seen": 0.5, "style_nll_sum": 10 * math.log(style), "base_nll_sum": 10 * math.log(base)}


def test_frontier_rows_pick_the_budgeted_extremes(tmp_path):
    recs = [_rec("greedy", "unsteered", 0.0, 1000.0, 2.0, 0.10),
            _rec("greedy", "prompt", 0.0, 700.0, 2.5, 0.10)]
    # exact: 0.1 within budget (-20%); 0.3 within budget (-40%); 0.5 halves at +30%; 1.0 halves at
    # +20% but loops (rep +0.2), so it counts for neither
    for lam, style, base, rep in [(0.1, 800, 2.1, 0.1), (0.3, 600, 2.2, 0.12), (0.5, 450, 2.6, 0.1),
                                  (1.0, 300, 2.4, 0.3)]:
        recs.append(_rec("greedy", "exact", lam, style, base, rep))
    recs.append(_rec("greedy", "best", 0.5, 400.0, 2.19, 0.14))  # inside the goal box
    rows = aggregate(recs)
    got = {f["family"]: f for f in frontier_rows(rows)}
    assert got["exact"]["max_style_cut_in_budget"] == pytest.approx(0.4) and got["exact"]["at_lambda"] == 0.3
    assert got["exact"]["min_base_rise_halving"] == pytest.approx(0.3) and got["exact"]["halving_lambda"] == 0.5
    assert got["best"]["max_style_cut_in_budget"] == pytest.approx(0.6)
    assert got["best"]["min_base_rise_halving"] == pytest.approx(0.095)
    assert got["prompt"]["max_style_cut_in_budget"] is None and got["prompt"]["min_base_rise_halving"] is None
    anchors = {"c": {"n": 2, "style_ppl_median": 100.0, "base_ppl_median": 8.0, "rep4_median": 0.0,
                     "tokens_median": 10.0}}
    a = anchor_ratios(rows, anchors)[0]
    assert a["style_ratio"] == pytest.approx(0.1) and a["base_ratio"] == pytest.approx(4.0)
    md = "\n".join(markdown_section(rows, anchors))
    assert "| c | greedy | exact | -40% (0.3) | +30% (0.5) |" in md
    assert "| c | greedy | prompt | none | never |" in md
    assert "| c | greedy | 2 | 100 (-90%) | 8 (+300%) | 0 |" in md
    plot_frontier(rows, anchors, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 0
