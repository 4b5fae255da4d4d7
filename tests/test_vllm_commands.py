"""The `serve` and `generate` commands: pre-flight checks (fast, no engine) and one real generate run."""
import json
import os
import shlex
import subprocess
import sys

import pytest
from helpers import train_test_packs

from vllm_ngram_style.cli import main
from vllm_ngram_style.commands.generate import render
from vllm_ngram_style.commands.serve import MIDDLEWARE, _strip, speculative_flags
from vllm_ngram_style.config import ENV_CONFIG, read_config
from vllm_ngram_style.launch import PROCESSOR_CLASS


@pytest.fixture(scope="module")
def packs(tiny_model_dir, tmp_path_factory):
    return train_test_packs(tiny_model_dir, tmp_path_factory.mktemp("cmd_packs"))


def _started(out: str):
    """The command `serve --check` prints: -> (environment {NAME: value}, argv)."""
    words = shlex.split(out.split("starting: ", 1)[1].splitlines()[0])
    env = dict(w.split("=", 1) for w in words[:1])
    return env, words[1:]


def test_serve_check_prints_the_vllm_command(tiny_model_dir, packs, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    conf = tmp_path / "styles.json"
    conf.write_text(json.dumps({"styles": {"gamma": packs["beta"]}}))
    rc = main(["serve", tiny_model_dir, "--style", f"alpha={packs['alpha']}", "--port", "8011",
               "--style-config", str(conf), "--dtype", "float32", "--modes", "exact",
               "--additional-config", '{"other": 1}', "--logits-processors", "x.y:Z", "--check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    env, cmd = _started(out)
    assert cmd[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir]
    i = cmd.index("--logits-processors")
    assert cmd[i + 1:i + 3] == ["x.y:Z", PROCESSOR_CLASS]  # one class for both model runners: no guessing
    assert cmd[cmd.index("--middleware") + 1] == MIDDLEWARE
    assert "--port" in cmd and "--dtype" in cmd and "--check" not in cmd and "--style" not in cmd
    assert cmd.count("--additional-config") == 1
    assert json.loads(cmd[cmd.index("--additional-config") + 1]) == {"other": 1}  # the styles travel in the file
    # the resolved configuration: absolute pack paths and modes, read back the engine's way
    path = env[ENV_CONFIG]
    assert path.startswith(str(tmp_path / "cache")) and os.path.isabs(path)
    cfg = read_config(None, {ENV_CONFIG: path})
    assert cfg.styles == {"alpha": packs["alpha"], "gamma": packs["beta"]} and cfg.modes == ("exact",)
    assert "alpha" in out and "gamma" in out
    # CPU: chunked prefill off (seeded requests would crash vLLM 0.32's CPU runner), unless chosen
    assert cmd[-1] == "--no-enable-chunked-prefill"
    assert main(["serve", tiny_model_dir, "--style", f"alpha={packs['alpha']}", "--enable-chunked-prefill",
                 "--check"]) == 0
    env2, cmd = _started(capsys.readouterr().out)
    assert "--no-enable-chunked-prefill" not in cmd and "--enable-chunked-prefill" in cmd
    assert "--additional-config" not in cmd and env2[ENV_CONFIG] != path  # another configuration, another file


@pytest.mark.parametrize("argv_tail,message", [
    (["--style", "alpha"], "--style wants NAME=PATH.stylepack, got 'alpha'"),
    (["--style", "alpha=/nonexistent.stylepack"], "style 'alpha': style pack not found: '/nonexistent.stylepack'"),
    (["--style", "alpha=A", "--modes", "exact,fancy"], "unknown mode fancy"),
    ([], "no styles: give --style NAME=PATH.stylepack"),
    (["--style", "alpha=A", "--speculative-config", "{}"], "does not support speculative decoding"),
    (["--style", "alpha=A", "--spec-tokens=3"], "does not support speculative decoding"),
    (["--style", "alpha=A", "--model", "x"], "give the model as the first argument"),
    (["--style", "alpha=A", "--additional-config", "{bad"], "--additional-config is not valid JSON"),
    (["--style-config", "/nonexistent/conf.json"], "config file not found"),
])
def test_serve_errors_before_starting(tiny_model_dir, packs, capsys, argv_tail, message):
    argv_tail = [a.replace("alpha=A", f"alpha={packs['alpha']}") for a in argv_tail]
    rc = main(["serve", tiny_model_dir, *argv_tail, "--check"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_serve_refuses_pack_of_another_tokenizer(packs, tmp_path, capsys):
    from vllm_ngram_style.testing.tiny import build_tiny_tokenizer

    other = build_tiny_tokenizer(str(tmp_path / "other"), vocab_size=300)
    assert main(["serve", other, "--style", f"alpha={packs['alpha']}", "--check"]) == 2
    err = capsys.readouterr().err
    assert "was trained with another tokenizer" in err
    assert "style 'alpha': " in err and f"(pack file: {packs['alpha']})" in err  # the style and its pack's path


def test_serve_checks_packs_before_loading_the_tokenizer(tiny_model_dir, packs, tmp_path, capsys, monkeypatch):
    """A missing or corrupt pack fails before the (slow) tokenizer fingerprint is even started."""
    from vllm_ngram_style import styles

    def no_tokenizer(*a, **k):
        raise AssertionError("the tokenizer was loaded before the packs were checked")

    monkeypatch.setattr(styles, "tokenizer_identity", no_tokenizer)
    corrupt = tmp_path / "corrupt.stylepack"
    corrupt.write_bytes(open(packs["alpha"], "rb").read()[:300])
    for pack, message in ((str(corrupt), "style 'bad': "), ("/nonexistent.stylepack", "style pack not found")):
        rc = main(["serve", tiny_model_dir, "--style", f"alpha={packs['alpha']}", "--style", f"bad={pack}", "--check"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "AssertionError" not in err, err


def test_serve_reports_a_bad_pack_without_importing_torch(tiny_model_dir, tmp_path):
    """Well under a second: neither the tokenizer nor torch (seconds to import) is loaded first."""
    code = ("import sys\nfrom vllm_ngram_style.cli import main\n"
            f"rc = main(['serve', {tiny_model_dir!r}, '--style', 'bad={tmp_path}/none.stylepack', '--check'])\n"
            "print(rc, [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr[-2000:]
    assert "style 'bad': style pack not found" in proc.stderr


@pytest.mark.parametrize("argv,found", [
    (["--speculative-config", "{}"], ["--speculative-config"]),
    (['--speculative-config={"method": "ngram"}'], ["--speculative-config"]),
    (["--speculative_config", "{}"], ["--speculative_config"]),
    (["--speculative-config.method", "ngram"], ["--speculative-config.method"]),
    (["--speculative-config.method=ngram"], ["--speculative-config.method"]),
    (["-sc", "{}"], ["-sc"]),
    (['-sc={"method": "ngram"}'], ["-sc"]),
    (["-sc.method", "ngram"], ["-sc"]),
    (["--spec-method", "ngram"], ["--spec-method"]),
    (["--spec_method=ngram"], ["--spec_method"]),
    (["--spec-model", "m", "--spec-tokens", "3"], ["--spec-model", "--spec-tokens"]),
    (["--spec-tokens=3"], ["--spec-tokens"]),
    (["--spec-tok", "3"], ["--spec-tok"]),  # argparse takes unambiguous prefixes
    (["--specu", "{}"], ["--specu"]),
    (["--specialize-active-lora", "--per-request-spec-decode-metrics", "--port", "8000"], []),
])
def test_speculative_flags_every_spelling(argv, found):
    assert speculative_flags(argv) == found


def test_serve_refuses_speculative_decoding_in_vllm_config_file(tiny_model_dir, packs, tmp_path, capsys):
    conf = tmp_path / "vllm.yaml"
    conf.write_text("port: 8000\nspeculative_config:\n  method: ngram\n  num_speculative_tokens: 3\n")
    rc = main(["serve", tiny_model_dir, "--style", f"alpha={packs['alpha']}", "--config", str(conf), "--check"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not support speculative decoding" in err and "speculative_config (in " in err, err


def test_strip_options():
    argv = ["--port", "1", "--logits-processors", "a:B", "c:D", "--additional-config", '{"x": 1}', "--dtype",
            "float32", "--additional-config={}", "--logits-processors=e:F"]
    assert _strip(argv, {"--additional-config": 1, "--logits-processors": None}) == \
        ["--port", "1", "--dtype", "float32"]


def test_render_side_by_side_and_stacked():
    cols = [("unsteered", "a b c " * 20), ("quixote (λ=0.3, exact)", "")]
    wide = render("A prompt", cols, 100)
    assert " │ " in wide and "(empty)" in wide and all(len(line) <= 100 for line in wide.splitlines())
    narrow = render("A prompt", cols, 50)
    assert " │ " not in narrow and "unsteered" in narrow and "quixote" in narrow


def test_generate_end_to_end(tiny_model_dir, packs):
    """The README's main command, on the tiny model: unsteered and one column per style."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               VLLM_NO_USAGE_STATS="1")
    cmd = [sys.executable, "-m", "vllm_ngram_style.cli", "generate", "--model", tiny_model_dir,
           "--style", f"alpha={packs['alpha']}", "--style", f"beta={packs['beta']}", "--strength", "1.5",
           "--adaptive", "--loop-guard", "3", "--loop-penalty", "2", "--prompt", "The knight said", "--prompt", "Market price",
           "--max-tokens", "12", "--width", "200", "--score", f"alpha={packs['beta']}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("The knight said") == 1 and out.count("Market price") == 1
    assert "unsteered" in out and "alpha (λ=1.5, exact, adaptive, loop guard 3, penalty 2)" in out and "beta (λ=1.5" in out
    assert "tokens in" in proc.stderr and "sampling (temperature 1, top-p 0.9, seed 0)" in proc.stderr
    # every column is scored (2 prompts, then the medians): unsteered and alpha under the --score pack, beta by
    # base ppl only
    assert out.count("held-out alpha ppl") == 2 * 2 + 2 and out.count("base ppl") == 2 * 3 + 3 + 1  # + the legend line
    assert "medians over the 2 prompts:" in out and "steered: alpha, beta at λ=1.5" in out
    bad = subprocess.run(cmd[:6] + ["--style", f"alpha={packs['alpha']}", "--score", "gamma=x"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--score 'gamma': not a style of this run" in bad.stderr
    bad = subprocess.run(cmd[:6] + ["--style", f"alpha={packs['alpha']}", "--strength", "7"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "style_strength must be between 0 and 5, got 7" in bad.stderr
    bad = subprocess.run(cmd[:6] + ["--style", f"alpha={packs['alpha']}", "--loop-guard", "0", "--loop-penalty", "2"],
                         capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "style_loop_penalty needs style_loop_guard" in bad.stderr


def test_generate_defaults_and_scores():
    """The demo's defaults (sampling, best mode with penalty 3), greedy one flag away, and the score line's
    arithmetic: base perplexity is exp(-mean raw logprob)."""
    import argparse
    import math

    from vllm_ngram_style.commands import generate

    p = argparse.ArgumentParser()
    generate.add_arguments(p)
    args = p.parse_args(["--model", "m", "--style", "a=x"])
    generate._settle_defaults(args)
    assert (args.temperature, args.top_p, args.adaptive, args.loop_guard, args.loop_penalty) == (1.0, 0.9, True, 4, 3.0)
    args = p.parse_args(["--model", "m", "--style", "a=x", "--greedy", "--no-adaptive", "--loop-guard", "0"])
    generate._settle_defaults(args)
    assert (args.temperature, args.adaptive, args.loop_penalty) == (0.0, False, 0.0)
    assert generate._decoding(args) == "greedy"
    assert math.isclose(generate.base_ppl([math.log(0.5)] * 3), 2.0)
    assert math.isclose(generate.base_ppl([math.log(0.5), math.log(0.125)]), 4.0)

    class Fixed:
        def style_ppl(self, tokens):
            return 100.0 + len(tokens)

    assert generate.score_line({"a": Fixed()}, ["a"], [1, 2, 3], [0.0, 0.0, 0.0]) == "held-out a ppl 103 · base ppl 1.0"
