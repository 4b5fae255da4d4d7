"""Fuzz the real server (conftest.py's `style_server`) with generated malformed style arguments.

Every style key with wrong types, non-finite and out-of-range values, unknown keys and huge values,
streaming and not, over completions, chat and responses, interleaved with valid requests,
sequentially and in bursts of 32. Each malformed request must get HTTP 400 naming the key, with a
body under 2 KB and one warning line (no traceback) in the server log; the server stays up and the
valid answers stay bit-identical.
"""
import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from vllm_ngram_style.request_args import KNOWN_KEYS

pytest.importorskip("vllm")
httpx = pytest.importorskip("httpx")

MAX_ERROR_BODY = 2048
MIN_MALFORMED = 300
BURST = 32
VALID_EVERY = 12  # one valid request after every 11 malformed ones


class Raw:
    """A JSON literal that json.dumps cannot write (NaN, 1e999, a 5,000-digit integer)."""

    def __init__(self, literal):
        self.literal = literal


HUGE_DIGITS = Raw("9" * 5000)
BIG_INT = Raw("1" + "0" * 400)

WRONG_TYPES = ["0.3", True, False, None, [0.3], {"x": 1}, [[[[[[[[1]]]]]]]]]
NON_FINITE = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999")]
HUGE_NUMBERS = [2 ** 64, -(2 ** 63) - 1, BIG_INT, HUGE_DIGITS, 1e308, -1e308]

# (key named by the message, bad style arguments)
CASES = (
    [("style", {"style": v}) for v in
     [7, 1.5, True, False, None, [], [["alpha"]], {"alpha": 1}, "cervantes", "", "ALPHA", " alpha", "álpha",
      "alpha\u0000", "x" * 1_000_000, HUGE_DIGITS, Raw("NaN"),
      # bad blends (a list of names, or "name:strength,..." is a blend of up to 4 styles)
      ["alpha", "alpha"], ["alpha", 7], "alpha:0.5,alpha:0.2", "alpha:0.5,beta", "alpha:9,beta:0.1",
      "alpha:nan,beta:0.1", "alpha:x", "alpha,beta,alpha,beta,alpha", ["alpha", "cervantes"], "alpha,,beta"]]
    + [("style_strength", {"style": "alpha:0.5,beta:0.2", "style_strength": 0.3}),  # strengths given twice
       ("style_strength", {"style": ["alpha", "beta"], "style_strength": [0.5]}),
       ("style_strength", {"style": ["alpha", "beta"], "style_strength": [0.5, True]}),
       ("style_strength", {"style": ["alpha", "beta"], "style_strength": [0.5, 6]})]
    + [("style_strength", {"style": "alpha", "style_strength": v}) for v in
       WRONG_TYPES + NON_FINITE + HUGE_NUMBERS + [-0.1, 5.0001, 9, -1, "9" * 100_000]]
    + [("style_mode", {"style": "beta", "style_mode": v}) for v in
       [1, True, None, "kn", "EXACT", "", "m" * 200_000, ["exact"], HUGE_DIGITS]]
    + [("style_adaptive", {"style": "alpha", "style_adaptive": v}) for v in
       ["yes", "true", 2, -1, 0.5, 1.0, None, [1], 2 ** 64, Raw("NaN"), HUGE_DIGITS]]
    + [("style_loop_guard", {"style": "alpha", "style_loop_guard": v}) for v in
       [1, 9, -3, 3.0, "3", True, None, [3], 2 ** 70, BIG_INT, HUGE_DIGITS, Raw("Infinity")]]
    + [("style_loop_penalty", {"style": "alpha", "style_loop_guard": 3, "style_loop_penalty": v}) for v in
       ["2", True, None, [2]] + NON_FINITE + [-1, 20.5, BIG_INT, HUGE_DIGITS]]
    + [("style_loop_penalty", {"style": "alpha", "style_loop_penalty": 2.0})]  # needs the loop guard
    + [("style", {"style_strength": 0.5}), ("style", {"style_mode": "exact", "style_adaptive": 1})]
    + [("style_strenght", {"style": "alpha", "style_strenght": 0.5}),
       ("style_x", {"style": "alpha", "style_x": 1}),
       ("style_k0", {"style": "alpha", **{f"style_k{i}": i for i in range(10_000)}}),
       ("style_kkkk", {"style": "alpha", "style_" + "k" * 100_000: 1})]
)

FORMS = [("/v1/completions", False), ("/v1/completions", True), ("/v1/chat/completions", False),
         ("/v1/chat/completions", True), ("/v1/responses", False), ("/v1/responses", True)]


def _body(path, stream, xargs):
    """The request as bytes: json.dumps, with Raw literals spliced in."""
    if path == "/v1/completions":
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
    elif path == "/v1/chat/completions":
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    else:
        body = {"model": "tiny", "input": "hi", "max_output_tokens": 4}
    raws = {}

    def mark(v):
        if isinstance(v, Raw):
            raws[f"__raw{len(raws)}__"] = v.literal
            return f"__raw{len(raws) - 1}__"
        return v

    body.update(stream=stream, vllm_xargs={k: mark(v) for k, v in xargs.items()})
    text = json.dumps(body)
    for name, literal in raws.items():
        text = text.replace(json.dumps(name), literal)
    return text.encode()


def malformed_requests():
    """>= MIN_MALFORMED (key, path, body): every case in 4 of the 6 endpoint forms, in turn."""
    out = []
    for i, (key, xargs) in enumerate(CASES):
        for k in range(4):
            path, stream = FORMS[(i + k) % len(FORMS)]
            out.append((key, path, _body(path, stream, xargs)))
    return out


VALID = [  # (path, body, what must stay identical)
    ("/v1/completions", {"model": "tiny", "prompt": [54, 274, 291, 292, 262], "max_tokens": 8, "temperature": 0,
                         "return_token_ids": True}),
    ("/v1/completions", {"model": "tiny", "prompt": "The squire and the lady", "max_tokens": 8, "temperature": 0,
                         "return_token_ids": True, "vllm_xargs": {"style": "alpha", "style_strength": 1.5}}),
    ("/v1/completions", {"model": "tiny", "prompt": "Market price", "max_tokens": 8, "temperature": 0,
                         "return_token_ids": True,
                         "vllm_xargs": {"style": "beta", "style_strength": 1.2, "style_mode": "paper",
                                        "style_adaptive": True, "style_loop_guard": 2, "style_loop_penalty": 3}}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}],
                              "max_tokens": 8, "temperature": 0, "vllm_xargs": {"style": "beta"}}),
    ("/v1/completions", {"model": "tiny", "prompt": "The knight rode to the inn", "max_tokens": 8, "temperature": 0,
                         "return_token_ids": True, "vllm_xargs": {"style": "alpha:1.2,beta:0.8"}}),  # a blend
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story."}],
                              "max_tokens": 8, "temperature": 0, "stream": True,
                              "vllm_xargs": {"style": "alpha", "style_strength": 2}}),
]


def _answer(status, text, stream):
    """What must stay identical: the generated token ids or text."""
    assert status == 200, text[:500]
    if not stream:
        choice = json.loads(text)["choices"][0]
        return choice.get("token_ids") or choice.get("message", {}).get("content") or choice["text"]
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


def _send(base, job):
    kind, path, body = job
    r = httpx.post(base + path, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                   headers={"content-type": "application/json"}, timeout=120)
    return kind, r.status_code, r.text


def test_fuzz_malformed_style_arguments(style_server):
    base = style_server.base
    bad = malformed_requests()
    assert len(bad) >= MIN_MALFORMED
    baseline = [_answer(*_send(base, ("valid", p, b))[1:], b.get("stream", False)) for p, b in VALID]
    rng = random.Random(18)
    rng.shuffle(bad)
    jobs, valid_cycle = [], itertools.cycle(range(len(VALID)))
    for i, (key, path, body) in enumerate(bad):
        jobs.append((("bad", key), path, body))
        if i % VALID_EVERY == VALID_EVERY - 1:
            v = next(valid_cycle)
            jobs.append((("valid", v), *VALID[v]))
    log_before = style_server.log.stat().st_size
    half = len(jobs) // 2
    results = [_send(base, job) for job in jobs[:half]]  # sequential
    with ThreadPoolExecutor(max_workers=BURST) as pool:  # then in bursts of 32
        results += list(pool.map(lambda job: _send(base, job), jobs[half:]))

    n_bad = n_valid = 0
    for ((kind, detail), status, text), (_, path, body) in zip(results, jobs):
        if kind == "valid":
            n_valid += 1
            assert _answer(status, text, body.get("stream", False)) == baseline[detail], (detail, text[:300])
            continue
        n_bad += 1
        assert status == 400, (detail, path, body[:200], status, text[:300])
        assert len(text.encode()) <= MAX_ERROR_BODY, (detail, len(text))
        error = json.loads(text)["error"]
        assert detail in error["message"], (detail, error)
        known = detail in KNOWN_KEYS  # an unknown key is named in the message only (it may be huge)
        assert error["param"] == ("vllm_xargs." + detail if known else "vllm_xargs"), (detail, error)
        assert error["type"] == "BadRequestError" and error["code"] == 400
    assert n_bad == len(bad) >= MIN_MALFORMED and n_valid == len(bad) // VALID_EVERY

    assert style_server.proc.poll() is None
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    with open(style_server.log, "rb") as f:
        f.seek(log_before)
        log = f.read().decode("utf-8", "replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    warnings = [line for line in log.splitlines() if "vllm-ngram-style: HTTP 400 for POST" in line]
    assert len(warnings) == n_bad and all(len(line) < 1000 for line in warnings)
