"""Per-request style arguments and the server configuration: every bad input has its own clear error."""
import json
import re
import subprocess
import sys

import pytest

from vllm_ngram_style.errors import ConfigError, RequestError
from vllm_ngram_style.config import ENV_CONFIG, read_config
from vllm_ngram_style.quoting import HugeInteger, brief
from vllm_ngram_style.request_args import (DEFAULT_STRENGTH, KNOWN_KEYS, MAX_STRENGTH, StyleRequest, loads_request_json,
                                           parse_request_args)
from vllm_ngram_style.validation import validate_sampling_params

STYLES = ["quixote", "news"]
MODES = ["exact", "paper", "kn"]


def parse(extra):
    return parse_request_args(extra, STYLES, MODES)


@pytest.mark.parametrize("extra", [None, {}, {"temperature_hint": 3}, {"kv_transfer_params": {"x": 1}}])
def test_unsteered(extra):
    assert parse(extra) is None


def test_defaults_and_full():
    assert parse({"style": "quixote"}) == StyleRequest("quixote", DEFAULT_STRENGTH, "exact", False, 0)
    got = parse({"style": "news", "style_strength": 1, "style_mode": "kn", "style_adaptive": 1,
                 "style_loop_guard": 4, "other_feature": "x"})
    assert got == StyleRequest("news", 1.0, "kn", True, 4)
    assert isinstance(got.strength, float)
    assert parse({"style": "news", "style_strength": MAX_STRENGTH}).strength == MAX_STRENGTH
    assert parse({"style": "news", "style_strength": 0}).strength == 0.0
    assert parse({"style": "news", "style_adaptive": True}).adaptive is True  # offline Python bool
    assert parse({"style": "news", "style_adaptive": 0}).adaptive is False
    assert parse({"style": "news", "style_loop_guard": 0}).loop_guard == 0
    assert parse({"style": "news", "style_loop_guard": 8}).loop_guard == 8
    assert parse({"style": "news", "style_loop_guard": 4}).loop_penalty == 0.0
    got = parse({"style": "news", "style_loop_guard": 3, "style_loop_penalty": 2})
    assert got.loop_penalty == 2.0 and isinstance(got.loop_penalty, float)
    assert parse({"style": "news", "style_loop_guard": 3, "style_loop_penalty": 20}).loop_penalty == 20.0


def test_default_mode_when_exact_disabled():
    assert parse_request_args({"style": "news"}, STYLES, ["paper"]).mode == "paper"


BAD = [
    ({"style": "quixote", "style_loop_penalty": 2.0}, r"style_loop_penalty needs style_loop_guard"),
    ({"style": "quixote", "style_loop_guard": 4, "style_loop_penalty": float("nan")},
     r"style_loop_penalty must be a finite number, got float nan"),
    ({"style": "quixote", "style_loop_guard": 4, "style_loop_penalty": -1},
     r"style_loop_penalty must be between 0 and 20, got -1"),
    ({"style": "quixote", "style_loop_guard": 4, "style_loop_penalty": 20.5},
     r"style_loop_penalty must be between 0 and 20, got 20.5"),
    ({"style": "quixote", "style_loop_guard": 4, "style_loop_penalty": True},
     r"style_loop_penalty must be a finite number, got bool True"),
    ({"style": "quixote", "style_loop_guard": 4, "style_loop_penalty": "2"},
     r"style_loop_penalty must be a finite number, got str '2'"),
    ({"style": "cervantes"}, r"unknown style 'cervantes' \(style\); this server offers: news, quixote"),
    ({"style": 3}, r"style must be a string naming a style, got int 3"),
    ({"style": ""}, r"unknown style ''"),
    ({"style": [["quixote"]]}, r"style must be a string.*got list"),  # (a list of names is a blend)
    ({"style_strength": 0.2}, r"style_strength given without 'style'.*news, quixote"),
    ({"style": "quixote", "style_strenght": 0.2}, r"unknown style argument 'style_strenght'; known: style, style_strength"),
    ({"style": "quixote", "style_x": 1, "style_y": 2}, r"unknown style arguments 'style_x', 'style_y'"),
    ({"style": "quixote", "style_strength": float("nan")}, r"style_strength must be a finite number, got nan"),
    ({"style": "quixote", "style_strength": float("inf")}, r"style_strength must be a finite number, got inf"),
    ({"style": "quixote", "style_strength": -float("inf")}, r"must be a finite number, got -inf"),
    ({"style": "quixote", "style_strength": -0.1}, r"style_strength must be between 0 and 5, got -0.1"),
    ({"style": "quixote", "style_strength": 5.01}, r"style_strength must be between 0 and 5, got 5.01"),
    ({"style": "quixote", "style_strength": "0.3"}, r"style_strength must be a number, got str '0.3'"),
    ({"style": "quixote", "style_strength": True}, r"style_strength must be a number, got bool True"),
    ({"style": "quixote", "style_strength": [0.3]}, r"style_strength must be a number, got list"),
    ({"style": "quixote", "style_mode": "fancy"}, r"unknown style mode 'fancy' \(style_mode\); this server offers: exact, kn, paper"),
    ({"style": "quixote", "style_mode": 1}, r"style_mode must be a string naming a style mode, got int 1"),
    ({"style": "quixote", "style_adaptive": "true"}, r"style_adaptive must be 0 or 1 \(or true/false\), got str 'true'"),
    ({"style": "quixote", "style_adaptive": 2}, r"style_adaptive must be 0 or 1.*got int 2"),
    ({"style": "quixote", "style_adaptive": 1.0}, r"style_adaptive must be 0 or 1.*got float 1.0"),
    ({"style": "quixote", "style_loop_guard": 1}, r"style_loop_guard must be 0 \(off\) or an n-gram size 2..8, got 1"),
    ({"style": "quixote", "style_loop_guard": 9}, r"style_loop_guard must be 0 \(off\) or an n-gram size 2..8, got 9"),
    ({"style": "quixote", "style_loop_guard": -3}, r"got -3"),
    ({"style": "quixote", "style_loop_guard": "3"}, r"style_loop_guard must be an integer.*got str '3'"),
    ({"style": "quixote", "style_loop_guard": 3.0}, r"style_loop_guard must be an integer.*got float 3.0"),
    ({"style": "quixote", "style_loop_guard": True}, r"style_loop_guard must be an integer.*got bool True"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_inputs(extra, message):
    with pytest.raises(RequestError, match=message) as info:
        parse(extra)
    key = info.value.key  # the HTTP layer reports it as the error's param
    assert key in KNOWN_KEYS or key in extra, key
    assert key in str(info.value)


HUGE = [10 ** 400, -(10 ** 400), 10 ** 5000, 2 ** 64, HugeInteger("9" * 5000), HugeInteger("-" + "1" * 6000)]


@pytest.mark.parametrize("value", HUGE, ids=lambda v: brief(v)[:16])
@pytest.mark.parametrize("key", ["style", "style_strength", "style_mode", "style_adaptive", "style_loop_guard",
                                 "style_loop_penalty"])
def test_huge_integers_are_request_errors(key, value):
    """Never an OverflowError from float() (validate_params, the engine, the middleware): a
    RequestError naming the key, quoting a few digits."""
    extra = {"style": "quixote", "style_loop_guard": 3, key: value}
    with pytest.raises(RequestError) as info:
        parse(extra)
    assert info.value.key == key and len(str(info.value)) < 250, str(info.value)


def test_messages_quote_briefly():
    cases = [({"style": "q" * 1_000_000}, "(1,000,000 characters)"),
             ({"style": "quixote", **{f"style_k{i}": i for i in range(10_000)}}, "and 9,995 more"),
             ({"style": "quixote", "style_" + "k" * 100_000: 1}, "(100,006 characters)"),
             ({"style": "quixote", "style_mode": "m" * 50_000}, "(50,000 characters)"),
             ({"style": "quixote", "style_strength": [[0.1] * 1000] * 1000}, "(1,000 items)"),
             ({"style": "quixote", "style_loop_guard": 10 ** 5000}, "about 5,001 digits")]
    for extra, expected in cases:
        with pytest.raises(RequestError) as info:
            parse(extra)
        assert expected in str(info.value) and len(str(info.value)) < 600, str(info.value)[:300]
    deep = [1]
    for _ in range(100_000):  # nesting far beyond any recursion limit
        deep = [deep]
    with pytest.raises(RequestError, match=r"style_strength must be a number, got list \[\[\[\.\.\.\]\]\]$"):
        parse({"style": "quixote", "style_strength": deep})


def test_raw_json_keeps_what_pydantic_erases():
    """The middleware's view: JSON booleans stay booleans, too-long integers become HugeInteger."""
    raw = loads_request_json(b'{"style": "quixote", "style_strength": true, "n": %s}' % (b"7" * 5000))
    assert raw["style_strength"] is True and isinstance(raw["n"], HugeInteger)
    with pytest.raises(RequestError, match="style_strength must be a number, got bool True"):
        parse(raw)
    assert parse(loads_request_json(b'{"style": "quixote", "style_adaptive": true}')).adaptive is True
    assert parse(loads_request_json(b'{"style": "quixote", "style_strength": 1}')).strength == 1.0
    with pytest.raises(RequestError, match=r"got 77777777777777777777...777777 \(5,000 digits\)"):
        parse(loads_request_json(b'{"style": "quixote", "style_strength": %s}' % (b"7" * 5000)))
    with pytest.raises(ValueError):
        loads_request_json(b'{"style": ')


def test_brief():
    assert brief("abc") == "'abc'" and brief(None) == "None" and brief(True) == "True" and brief(1.5) == "1.5"
    assert brief("x" * 101) == repr("x" * 100) + "... (101 characters)"
    assert brief(12345) == "12345" and brief(-(10 ** 50)) == "-1000000000000000000...000000 (51 digits)"
    assert brief(10 ** 10000) == "<an integer of about 10,001 digits>"
    assert brief({"a": [1, 2]}) == "{'a': [1, 2]}" and brief(list(range(10))) == "[0, 1, 2, 3, ...] (10 items)"


def test_bad_inputs_have_distinct_messages():
    messages = []
    for extra, _ in BAD:
        with pytest.raises(RequestError) as info:
            parse(extra)
        messages.append(str(info.value))
    assert len(set(messages)) == len(messages)
    assert issubclass(RequestError, ValueError)  # vLLM maps ValueError from validate_params to HTTP 400


def test_module_is_light():
    """vLLM's API process imports request_args, config, validation and the middleware to validate
    requests: no torch, no vLLM (no starlette either, until a response needs it)."""
    code = ("import sys, vllm_ngram_style.request_args, vllm_ngram_style.config, vllm_ngram_style.validation, "
            "vllm_ngram_style.middleware; "
            "bad = [m for m in ('torch', 'vllm', 'numpy', 'triton', 'starlette') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- server configuration ------------------------------------------------------------------------

def write(path, data):
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_config_sources_merge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "conf"
    sub.mkdir()
    cfile = write(sub / "styles.json", {"ngram_style": {"styles": {"news": "news.stylepack"}, "modes": ["paper"]}})
    env = write(tmp_path / "env.json", {"styles": {"poe": "/abs/poe.stylepack", "news": str(sub / "news.stylepack")}})
    cfg = read_config({"ngram_style": {"styles": {"quixote": "packs/q.stylepack"}, "config_file": cfile}},
                      {ENV_CONFIG: env})
    assert cfg.styles == {"quixote": str(tmp_path / "packs" / "q.stylepack"),
                          "news": str(sub / "news.stylepack"),  # relative to the config file's folder
                          "poe": "/abs/poe.stylepack"}
    assert cfg.modes == ("paper",)
    assert cfg.names == ["news", "poe", "quixote"]
    assert read_config({"ngram_style": {"styles": {"a": "a.stylepack"}}}, {}).modes == ("exact", "paper")
    assert read_config({}, {}) is None
    assert read_config({"other_plugin": {}}, {}) is None


@pytest.mark.parametrize("additional,message", [
    ({"ngram_style": []}, r"must be a JSON object, got list"),
    ({"ngram_style": {"style": {}}}, r"unknown key 'style' \(allowed: styles, modes, config_file\)"),
    ({"ngram_style": {"styles": ["a"]}}, r"'styles' must be an object"),
    ({"ngram_style": {"styles": {"a b": "x.stylepack"}}}, r"bad style name 'a b'"),
    ({"ngram_style": {"styles": {"a": 3}}}, r"style 'a' needs a .stylepack path"),
    ({"ngram_style": {"styles": {"a": "x"}, "modes": []}}, r"'modes' must be a non-empty list"),
    ({"ngram_style": {"styles": {"a": "x"}, "modes": ["exact", "exact"]}}, r"distinct mode names"),
    ({"ngram_style": {"styles": {}}}, r"no styles configured"),
    ({"ngram_style": {"config_file": "/nonexistent/ns.json"}}, r"config file not found: '/nonexistent/ns.json'"),
    ({"ngram_style": {"config_file": 5}}, r"'config_file' must be a path"),
])
def test_config_errors(additional, message):
    with pytest.raises(ConfigError, match=message):
        read_config(additional, {})


def test_config_file_errors(tmp_path):
    bad = write(tmp_path / "bad.json", "{not json")
    with pytest.raises(ConfigError, match=r"is not valid JSON"):
        read_config({"ngram_style": {"config_file": bad}}, {})
    with pytest.raises(ConfigError, match=rf"{ENV_CONFIG}: .*is not valid JSON"):
        read_config(None, {ENV_CONFIG: bad})
    with pytest.raises(ConfigError, match=r"is a folder"):
        read_config(None, {ENV_CONFIG: str(tmp_path)})
    nested = write(tmp_path / "nested.json", {"styles": {"a": "a.stylepack"}, "config_file": "x.json"})
    with pytest.raises(ConfigError, match=r"unknown key 'config_file' \(allowed: styles, modes\)"):
        read_config(None, {ENV_CONFIG: nested})
    one = write(tmp_path / "one.json", {"styles": {"a": "/p/a.stylepack"}})
    with pytest.raises(ConfigError, match=r"style 'a' is configured twice with different packs"):
        read_config({"ngram_style": {"styles": {"a": "/p/other.stylepack"}}}, {ENV_CONFIG: one})


class _Params:
    def __init__(self, extra):
        self.extra_args = extra


def test_validate_sampling_params_uses_env(tmp_path, monkeypatch):
    from vllm_ngram_style import validation

    monkeypatch.setattr(validation, "_active", [])  # forget processors other tests built in this process
    monkeypatch.setenv(ENV_CONFIG, write(tmp_path / "c.json", {"styles": {"quixote": "q.stylepack"}}))
    assert validate_sampling_params(_Params(None)) is None
    assert validate_sampling_params(_Params({"style": "quixote"})).style == "quixote"
    with pytest.raises(RequestError, match="unknown style 'poe'"):
        validate_sampling_params(_Params({"style": "poe"}))
    with pytest.raises(RequestError, match=r"unknown style mode 'kn'"):  # kn is not enabled by default
        validate_sampling_params(_Params({"style": "quixote", "style_mode": "kn"}))
    monkeypatch.delenv(ENV_CONFIG)
    with pytest.raises(RequestError, match="not configured on this server"):
        validate_sampling_params(_Params({"style": "quixote"}))
    assert validate_sampling_params(_Params({"seed_hint": 1})) is None  # unsteered needs no config


def test_validate_finds_caller_vllm_config():
    """vLLM's InputProcessor calls the classmethod without the config; it is found on the caller."""
    class _VllmConfig:
        additional_config = {"ngram_style": {"styles": {"kafka": "/x/kafka.stylepack"}}}

    class _InputProcessor:  # the shape of vLLM's caller: self.vllm_config, calls validate
        vllm_config = _VllmConfig()

        def check(self, params):
            return validate_sampling_params(params)

    assert _InputProcessor().check(_Params({"style": "kafka"})).style == "kafka"
    with pytest.raises(RequestError, match=r"unknown style 'quixote'.*offers: kafka"):
        _InputProcessor().check(_Params({"style": "quixote"}))


# ---- style blends ----------------------------------------------------------------------------------

BLEND_STYLES = ["austen", "news", "quixote", "bible", "kafka"]


@pytest.mark.parametrize("extra,components", [
    ({"style": "austen:0.5,news:0.2"}, (("austen", 0.5), ("news", 0.2))),
    ({"style": " austen : 0.5 , news:0.2 "}, (("austen", 0.5), ("news", 0.2))),
    ({"style": "austen,news", "style_strength": 0.4}, (("austen", 0.4), ("news", 0.4))),
    ({"style": "austen,news"}, (("austen", 0.3), ("news", 0.3))),
    ({"style": "austen:1.5"}, (("austen", 1.5),)),
    ({"style": ["austen", "news"], "style_strength": [0.5, 0.2]}, (("austen", 0.5), ("news", 0.2))),
    ({"style": ["austen", "news", "quixote", "bible"], "style_strength": 1}, tuple((n, 1.0) for n in BLEND_STYLES[:4])),
    ({"style": ["kafka"]}, (("kafka", 0.3),)),
    ({"style": "news:0,austen:0.7"}, (("news", 0.0), ("austen", 0.7))),
])
def test_blends_parse(extra, components):
    req = parse_request_args(extra, BLEND_STYLES)
    assert req.components == components
    assert req.style == components[0][0] and req.strength == components[0][1]
    assert req.total_strength == pytest.approx(sum(s for _, s in components))
    assert parse_request_args(req.to_extra_args(), BLEND_STYLES) == req  # what a client sends back parses equal


@pytest.mark.parametrize("extra,key,message", [
    ({"style": "austen:0.5,poe:0.2"}, "style", r"unknown style 'poe' \(style\)"),
    ({"style": ["austen", "poe"]}, "style", r"unknown style 'poe'"),
    ({"style": "austen:0.5,austen:0.2"}, "style", r"names 'austen' more than once"),
    ({"style": ["news", "news"]}, "style", r"names 'news' more than once"),
    ({"style": "austen,news,quixote,bible,kafka"}, "style", r"blends 5 styles; at most 4"),
    ({"style": BLEND_STYLES + ["austen"]}, "style", r"blends 6 styles; at most 4"),
    ({"style": "austen:nan,news:0.1"}, "style", r"strength of 'austen' in style must be between 0 and 5, got 'nan'"),
    ({"style": "austen:inf,news:0.1"}, "style", r"between 0 and 5, got 'inf'"),
    ({"style": "austen:6,news:0.1"}, "style", r"between 0 and 5, got '6'"),
    ({"style": "austen:-1"}, "style", r"between 0 and 5, got '-1'"),
    ({"style": "austen:lots"}, "style", r"must be a number, got 'lots'"),
    ({"style": ["austen", "news"], "style_strength": [0.5, float("nan")]}, "style_strength", r"finite number, got nan"),
    ({"style": ["austen", "news"], "style_strength": [0.5, 7]}, "style_strength", r"between 0 and 5, got 7"),
    ({"style": ["austen", "news"], "style_strength": [0.5, True]}, "style_strength", r"must be a number, got bool True"),
    ({"style": "austen:0.5,news:0.2", "style_strength": 0.3}, "style_strength", r"strengths given twice"),
    ({"style": "austen:0.5,news", "style_strength": 0.3}, "style", r"give every style of a blend a strength"),
    ({"style": ["austen", "news"], "style_strength": [0.5]}, "style_strength", r"lists 1 strength for 2 styles"),
    ({"style": "austen,news", "style_strength": [0.5, 0.2]}, "style_strength", r"style_strength must be a number, got list"),
    ({"style": []}, "style", r"names no style"),
    ({"style": ",", "style_strength": 0.2}, "style", r"unknown style ''"),
])
def test_bad_blends_name_the_problem(extra, key, message):
    with pytest.raises(RequestError, match=message) as err:
        parse_request_args(extra, BLEND_STYLES)
    assert err.value.key == key


def test_blend_penalty_scales_with_the_whole_blend():
    req = parse_request_args({"style": "austen:0.5,news:0.2", "style_loop_guard": 3, "style_loop_penalty": 2.0},
                             BLEND_STYLES)
    assert req.guard_penalty_nats == pytest.approx(0.7 * 2.0)


def test_engine_parse_cache_matches_the_parser():
    """engine._parse_cached (memoised parse_request_args) gives what the parser gives, keeps 1, 1.0 and
    True apart, never caches an error, and parses list values (unhashable) without the cache."""
    from vllm_ngram_style.engine import _PARSED, _parse_cached
    from vllm_ngram_style.errors import RequestError
    from vllm_ngram_style.request_args import parse_request_args

    names, modes = ["a", "b"], ("exact", "paper")
    cases = [{"style": "a", "style_strength": 1}, {"style": "a", "style_strength": 1.0},
             {"style": "a", "style_strength": True}, {"style": "a:0.5,b:0.2"},
             {"style": ["a", "b"], "style_strength": [0.5, 0.2]}, {"style": "c"}, {"style": "a", "style_mode": "paper"}]
    for _ in range(2):  # the second pass reads the cache
        for extra in cases:
            try:
                want = parse_request_args(extra, names, modes)
            except RequestError as exc:
                with pytest.raises(RequestError, match=re.escape(str(exc))):
                    _parse_cached(extra, names, modes)
            else:
                assert _parse_cached(extra, names, modes) == want
    assert not any(isinstance(v, Exception) for v in _PARSED.values())
