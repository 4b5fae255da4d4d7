"""`eval` with a held-out pack and style classifiers, end to end on the tiny model (seconds)."""
import importlib.util
import json

import pytest

from vllm_ngram_style.cli import main
from vllm_ngram_style.testing.tiny import sample_text

ARGS = ["--num-prompts", "2", "--max-tokens", "6", "--lambdas", "0", "0.5", "--prompt-lambdas", "0.5",
        "--families", "best", "--decodings", "sample", "--backend", "transformers", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def split_packs(tiny_model_dir, tmp_path_factory):
    from vllm_ngram_style.pack import save_pack
    from vllm_ngram_style.train import train_pack

    d = tmp_path_factory.mktemp("heldout_packs")
    corpus, other = d / "tiny_corpus.txt", d / "other.txt"
    corpus.write_text(sample_text(400, seed=0))
    other.write_text(sample_text(400, seed=5).upper())  # another "style": the same words, capitalised
    out = {"corpus": str(corpus), "other": str(other)}
    for part in ("train", "heldout", "all"):
        pack, _ = train_pack(tiny_model_dir, [str(corpus)], top_k=64, name="tiny", progress=False, part=part)
        out[part] = str(d / f"tiny_{part}.stylepack")
        save_pack(pack, out[part])
    return out


def test_eval_reports_heldout_style_and_classifier_figures(tiny_model_dir, split_packs, tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "out"
    rc = main(["eval", "--model", tiny_model_dir, "--pack", f"tiny={split_packs['train']}",
               "--heldout-pack", f"tiny={split_packs['heldout']}", "--style-corpus", f"tiny={split_packs['corpus']}",
               "--negative-corpus", split_packs["other"], "--classifiers", "tfidf", "--negative-prompts", "4",
               "--out", str(out), *ARGS])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    recs = data["records"]
    assert len(recs) == 2 * (2 + 1 + 1)  # unsteered, prompt, best@0.5, prompt+best@0.5
    for r in recs:
        assert r["heldout_style_ppl"] > 1 and r["style_ppl"] > 1
        assert 0.0 <= r["p_style_tfidf"] <= 1.0
    # the held-out pack is another pack: the same text scores differently under it
    assert any(abs(r["heldout_style_ppl"] - r["style_ppl"]) > 1e-6 for r in recs)
    assert [n["prompt_id"] for n in data["negative_replies"]] == ["neg-narrative-1", "neg-dialogue-1",
                                                                  "neg-expository-1", "neg-technical-1"]
    (c,) = data["classifiers"]
    assert c["classifier"] == "tfidf" and 0 <= c["cv_balanced_accuracy"] <= 1 and len(c["cv_folds"]) >= 2
    assert c["examples"]["other:replies"] == 4 and c["examples"]["style:tiny"] > 0 and c["examples"]["other:other"] > 0
    assert data["meta"]["corpora"][0]["pack_part"] == "train"
    assert data["meta"]["corpora"][0]["heldout_pack_part"] == "heldout"
    assert {g["style"] for g in data["goal_heldout"]} == {"heldout_style_ppl"} and data["goal_classifier"]
    md = (out / "summary.md").read_text()
    for text in ("Goal check: held-out style perplexity", "steering pack part train", "## Style classifiers",
                 "Goal check: style classifiers", "in-sample style ppl | held-out style ppl | P(style) tfidf",
                 "Frontier (held-out style ppl)", "Frontier (in-sample style ppl)"):
        assert text in md, text
    # the report rebuilds identically from results.json
    assert main(["eval", "--report-only", "--out", str(out), "--no-plots"]) == 0
    assert (out / "summary.md").read_text() == md
    # an older results.json (no held-out fields, no classifiers) still reports, with n/a
    for key in ("classifiers", "negative_replies", "goal_heldout", "goal_classifier"):
        data.pop(key)
    for r in data["records"]:
        for key in ("heldout_style_ppl", "heldout_style_nll_sum", "p_style_tfidf"):
            r.pop(key)
    (out / "results.json").write_text(json.dumps(data))
    assert main(["eval", "--report-only", "--out", str(out), "--no-plots"]) == 0
    md = (out / "summary.md").read_text()
    assert "held-out style perplexity" in md and "n/a: this run has no held-out pack" in md
    assert "n/a: no style classifier" in md and "P(style)" not in md.split("## Frontier")[1]


def test_eval_refuses_what_would_not_be_held_out(tiny_model_dir, split_packs, tmp_path, capsys, monkeypatch):
    base = ["eval", "--model", tiny_model_dir, "--pack", f"tiny={split_packs['train']}", "--out", str(tmp_path / "o")]
    assert main(base + ["--heldout-pack", f"tiny={split_packs['all']}", *ARGS]) == 2
    assert "trained on part 'all', not the held-out part" in capsys.readouterr().err
    assert main(base + ["--heldout-pack", f"other={split_packs['heldout']}", *ARGS]) == 2
    assert "no --pack is named 'other'" in capsys.readouterr().err
    assert main(base + ["--classifiers", "tfidf", *ARGS]) == 2
    assert "--classifiers needs --style-corpus" in capsys.readouterr().err
    # the embedding classifier without its libraries: a clear error before any generation
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sentence_transformers" else real(n, *a))
    assert main(base + ["--style-corpus", f"tiny={split_packs['corpus']}", "--classifiers", "tfidf,minilm", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "minilm classifier needs sentence-transformers" in err and "--classifiers tfidf" in err
