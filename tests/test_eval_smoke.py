"""End-to-end smoke test of `vllm-ngram-style eval` on the tiny random model (seconds)."""
import csv
import importlib.util
import json
import math
import os

import pytest

from vllm_ngram_style.cli import main
from vllm_ngram_style.testing.tiny import sample_text

ARGS = ["--num-prompts", "2", "--max-tokens", "6", "--lambdas", "0", "0.5", "--prompt-lambdas", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def tiny_pack(tiny_model_dir, tmp_path_factory):
    from vllm_ngram_style.pack import save_pack
    from vllm_ngram_style.train import train_pack

    d = tmp_path_factory.mktemp("eval_pack")
    corpus = d / "tiny_corpus.txt"
    corpus.write_text(sample_text())
    pack, _ = train_pack(tiny_model_dir, [str(corpus)], top_k=64, name="tiny", progress=False)
    path = str(d / "tiny.stylepack")
    save_pack(pack, path)
    return path


def test_eval_cli_transformers_backend(tiny_model_dir, tiny_pack, tmp_path, capsys):
    out = tmp_path / "out"
    corpus = os.path.join(os.path.dirname(tiny_pack), "tiny_corpus.txt")
    rc = main(["eval", "--model", tiny_model_dir, "--pack", f"tiny={tiny_pack}", "--out", str(out),
               "--backend", "transformers", "--corpus-text", f"tiny={corpus}", *ARGS])
    assert rc == 0
    for name in ("summary.csv", "results.json", "generations.jsonl", "summary.md", "tiny.png", "frontier.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    # unsteered, prompt, 4 families x 1 lambda, prompt+best x 1 lambda; x 2 decodings
    assert len(rows) == 2 * 7
    assert {r["family"] for r in rows} == {"unsteered", "prompt", "paper", "exact", "exact+adaptive", "best",
                                           "prompt+best"}
    data = json.loads((out / "results.json").read_text())
    recs = data["records"]
    assert len(recs) == 2 * 7 * 2 and data["meta"]["backend"] == "transformers"
    for r in recs:
        assert 1 <= r["tokens"] <= 6 and r["style_ppl"] > 1 and r["base_ppl"] > 1
        if r["family"] in ("unsteered", "prompt"):
            assert r["js_bits"] == 0.0  # no steering: identical distributions
        else:
            assert r["js_bits"] > 0.0
    # steering toward the pack lowers style perplexity on the tiny model too (exact mode, greedy)
    by = {(r["family"], r["decoding"]): float(r["style_ppl_median"]) for r in rows}
    assert by[("exact", "greedy")] < by[("unsteered", "greedy")]
    assert len(data["goal"]) == 2  # greedy and sample
    md = (out / "summary.md").read_text()
    assert "Goal check" in md and "| best | 0.5 |" in md
    # the corpus text anchor: one passage per prompt, as long as the generations may be
    assert [a["tokens"] for a in data["anchors"]] == [6, 6] and {a["corpus"] for a in data["anchors"]} == {"tiny"}
    assert all(a["style_ppl"] > 1 and a["base_ppl"] > 1 for a in data["anchors"])
    assert "## Frontier" in md and "Corpus text as the far end" in md and "| tiny | greedy | 2 |" in md
    # generations differ between greedy and sampling for at least one prompt
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == len(recs)
    # reports rebuild identically from the saved results
    before = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    md_before = (out / "summary.md").read_text()
    assert main(["eval", "--report-only", "--out", str(out), "--no-plots"]) == 0
    assert (out / "summary.csv").read_text() == before
    assert (out / "summary.md").read_text() == md_before  # anchors survive the round trip
    # anchors can be added to an existing report; a corpus name that was not evaluated is refused
    assert main(["eval", "--report-only", "--out", str(out), "--no-plots", "--model", tiny_model_dir,
                 "--pack", f"tiny={tiny_pack}", "--corpus-text", f"tiny={corpus}"]) == 0
    assert len(json.loads((out / "results.json").read_text())["anchors"]) == 2
    assert main(["eval", "--report-only", "--out", str(out), "--no-plots", "--model", tiny_model_dir,
                 "--pack", f"tiny={tiny_pack}", "--corpus-text", f"other={corpus}"]) == 2


def test_eval_cli_errors(tiny_model_dir, tiny_pack, tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path / "missing"), "--pack", tiny_pack, "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown model" in capsys.readouterr().err
    rc = main(["eval", "--model", tiny_model_dir, "--pack", str(tmp_path / "nope.stylepack"), "--out",
               str(tmp_path / "o")])
    assert rc == 2 and "not found" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None
                    or importlib.util.find_spec("vllm_ngram_style.vllm_v1") is None,
                    reason="vLLM or the plugin's V1 processor is not installed")
def test_vllm_backend_matches_transformers_greedy(tiny_model_dir, tiny_pack):
    """The same sweep through vLLM with the plugin and through the transformers loop: greedy
    tokens agree, and vLLM's raw logprobs are the unsteered model's."""
    from vllm_ngram_style.evaluation.prompts import load_prompts
    from vllm_ngram_style.evaluation.runner import CorpusSpec, EvalSettings, run_evaluation

    corpora = [CorpusSpec("tiny", tiny_pack, "Write like the tiny corpus.")]
    prompts = load_prompts(limit=2)
    settings = EvalSettings(lambdas=(0.0, 0.5, 1.0), prompt_lambdas=(0.5,), decodings=("greedy",), max_tokens=8,
                            loop_penalty=4.0)  # best mode with an active loop penalty, through both paths
    quiet = dict(progress=False, log=lambda *a: None)
    v = run_evaluation(tiny_model_dir, corpora, prompts, settings, backend="vllm", enforce_eager=True, **quiet)
    t = run_evaluation(tiny_model_dir, corpora, prompts, settings, backend="transformers", **quiet)
    assert v["meta"]["backend"] == "vllm" and v["meta"]["timings"][0]["sequences"] == len(v["records"])
    key = lambda r: (r["family"], r["lambda"], r["prompt_id"])  # noqa: E731
    tv = {key(r): r for r in t["records"]}
    same = 0
    for r in v["records"]:
        o = tv[key(r)]
        same += r["text"] == o["text"]
        # JS from a transformers forward over vLLM's text equals JS during transformers decoding
        if r["text"] == o["text"] and r["tokens"]:
            assert r["js_bits"] == pytest.approx(o["js_bits"], rel=1e-3, abs=1e-5)
            assert r["base_ppl"] == pytest.approx(o["base_ppl"], rel=1e-3)
        assert r.get("base_lp_maxdiff_vs_transformers", 0.0) < 1e-3
    assert same >= 0.9 * len(v["records"]), f"only {same}/{len(v['records'])} greedy generations agree"
    steered = [r for r in v["records"] if r["family"] == "exact" and r["lambda"] == 1.0]
    assert all(not math.isnan(r["js_bits"]) and r["js_bits"] > 0 for r in steered)
