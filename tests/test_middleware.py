"""The ASGI middleware that answers bad style arguments with HTTP 400 before vLLM starts a response,
driven directly through the ASGI protocol (no server): what it rejects, and that everything else
reaches the app exactly as the client sent it."""
import asyncio
import json
import logging
import types

import pytest

from vllm_ngram_style import middleware as mw
from vllm_ngram_style.middleware import StyleArgsMiddleware
from vllm_ngram_style.config import ENV_CONFIG

MAX_ERROR_BODY = 2048


@pytest.fixture(autouse=True)
def styles_config(tmp_path, monkeypatch):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"ngram_style": {"styles": {"alpha": "/p/a.stylepack", "beta": "/p/b.stylepack"},
                                                "modes": ["exact", "paper"]}}))
    monkeypatch.setenv(ENV_CONFIG, str(path))
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


class Recorder:
    """The inner app: records what reached it and answers 200."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        messages = []
        while True:
            m = await receive()
            messages.append(m)
            if m["type"] != "http.request" or not m.get("more_body"):
                break
        self.calls.append((scope, messages))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(body, path="/v1/completions", method="POST", content_type=b"application/json", chunks=None,
        headers=(), app_state=None, content_length=True):
    """-> (status, response body bytes, response headers, Recorder)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parts = chunks or [raw]
    hdrs = [(b"content-type", content_type)] if content_type else []
    if content_length:
        hdrs.append((b"content-length", str(sum(map(len, parts))).encode()))
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": hdrs + list(headers)}
    if app_state is not None:
        scope["app"] = types.SimpleNamespace(state=app_state)
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    incoming.append({"type": "http.disconnect"})
    sent, inner = [], Recorder()

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(StyleArgsMiddleware(inner)(scope, receive, send))
    start = sent[0]
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:]), dict(start["headers"]), inner


def request(xargs, **extra):
    return {"model": "m", "prompt": "hi", "max_tokens": 4, "vllm_xargs": xargs, **extra}


def assert_passed_untouched(result, chunks):
    status, _, _, inner = result
    assert status == 200 and len(inner.calls) == 1
    received = [m for m in inner.calls[0][1] if m["type"] == "http.request"]
    assert [m["body"] for m in received] == chunks  # the same bytes, in the same chunks


@pytest.mark.parametrize("case", [
    dict(body=request({"style": "cervantes"}), path="/v1/models"),  # not a generation endpoint
    dict(body=request({"style": "cervantes"}), path="/v1/completions", method="GET"),
    dict(body=request({"style": "cervantes"}), content_type=b"text/plain"),  # vLLM answers 415
    dict(body=request(None)),
    dict(body=request({"session_id": "x"})),  # other extensions' keys
    dict(body={"model": "m", "prompt": "a story in the style of Austen", "max_tokens": 4}),  # 'style' in text only
    dict(body=request({"style": "alpha", "style_strength": 1.5, "style_adaptive": True, "style_loop_guard": 3})),
    dict(body=b'{"model": "m", "prompt": "x", "vllm_xargs": {"style": '),  # malformed: vLLM's own 400
    dict(body=request(["style", "alpha"])),  # not an object: vLLM's validation names vllm_xargs
    dict(body=b"[" * 100000 + b"]" * 100000),  # deeper than Python's JSON parser goes: vLLM's answer
])
def test_passes_what_it_does_not_own(case):
    raw = case["body"] if isinstance(case["body"], bytes) else json.dumps(case["body"]).encode()
    assert_passed_untouched(run(**case), [raw])


def test_replays_a_chunked_body_and_streams_a_huge_one_through(monkeypatch):
    good = json.dumps(request({"style": "alpha"})).encode()
    chunks = [good[:10], good[10:11], good[11:]]
    assert_passed_untouched(run(good, chunks=chunks), chunks)
    bad = json.dumps(request({"style": "cervantes"})).encode()
    monkeypatch.setattr(mw, "MAX_INSPECTED_BYTES", 20)
    assert_passed_untouched(run(bad), [bad])  # announced length over the cap: not even read
    chunks = [bad[:15], bad[15:30], bad[30:]]
    assert_passed_untouched(run(bad, chunks=chunks, content_length=False), chunks)  # read up to the cap, replayed


def rejected(xargs, path="/v1/completions", location="vllm_xargs", **kw):
    body = {"sampling_params": {"max_tokens": 4, "extra_args": xargs}, "token_ids": [1]} \
        if location == "sampling_params.extra_args" else request(xargs, **kw)
    status, raw, headers, inner = run(body, path=path)
    assert status == 400 and not inner.calls, raw[:300]
    assert len(raw) <= MAX_ERROR_BODY and headers[b"content-type"] == b"application/json"
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "BadRequestError" and error["code"] == 400
    return error


@pytest.mark.parametrize("xargs,key,message", [
    ({"style": "cervantes"}, "style", "unknown style 'cervantes' (style); this server offers: alpha, beta"),
    ({"style": "alpha", "style_strength": True}, "style_strength", "style_strength must be a number, got bool True"),
    ({"style": "alpha", "style_strength": False}, "style_strength", "got bool False"),
    ({"style": "alpha", "style_loop_guard": True}, "style_loop_guard", "must be an integer"),
    ({"style": "alpha", "style_loop_guard": 3, "style_loop_penalty": True}, "style_loop_penalty", "got bool True"),
    ({"style": "alpha", "style_strength": 2 ** 64}, "style_strength", "must be between 0 and 5, got 18446744073709551616"),
    ({"style": "alpha", "style_strength": 10 ** 399}, "style_strength", "must be between 0 and 5, got 1000000000"),
    ({"style": "alpha", "style_loop_guard": -(10 ** 30)}, "style_loop_guard", "n-gram size 2..8"),
    ({"style": "alpha", "style_strength": [[[[[[1]]]]]]}, "style_strength", "must be a number, got list [[[...]]]"),
    ({"style": "alpha", "style_strength": {"a": 1}}, "style_strength", "must be a number, got dict"),
    ({"style": "alpha", "style_strength": None}, "style_strength", "must be a number, got NoneType None"),
    ({"style": None}, "style", "style must be a string naming a style, got NoneType None"),
    ({"style": "alpha", "style_adaptive": 2}, "style_adaptive", "must be 0 or 1"),
    ({"style_strength": 1}, "style", "style_strength given without 'style'"),
])
def test_rejects_naming_the_key(xargs, key, message):
    error = rejected(xargs)
    assert message in error["message"], error
    assert error["param"] == f"vllm_xargs.{key}"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_rejects_non_finite_numbers(literal):
    body = b'{"model": "m", "prompt": "x", "vllm_xargs": {"style": "alpha", "style_strength": %s}}' % literal.encode()
    status, raw, _, inner = run(body)
    assert status == 400 and not inner.calls
    assert json.loads(raw)["error"]["message"].startswith("style_strength must be a finite number"), raw


def test_rejects_integers_too_long_for_python():
    """5,000 digits: json.loads itself would refuse the body (int max str digits); the key is still named."""
    body = b'{"prompt": "x", "vllm_xargs": {"style": "alpha", "style_loop_guard": %s}}' % (b"9" * 5000)
    status, raw, _, inner = run(body)
    error = json.loads(raw)["error"]
    assert status == 400 and not inner.calls and len(raw) < 500
    assert error["param"] == "vllm_xargs.style_loop_guard" and "(5,000 digits)" in error["message"], error


def test_messages_are_bounded():
    error = rejected({"style": "x" * 1_000_000})
    assert "(1,000,000 characters)" in error["message"] and error["param"] == "vllm_xargs.style"
    error = rejected({"style": "alpha", **{f"style_k{i}": i for i in range(10_000)}})
    assert "unknown style arguments 'style_k0', 'style_k1'" in error["message"]
    assert "and 9,995 more" in error["message"] and error["param"] == "vllm_xargs"
    error = rejected({"style": "alpha", "style_" + "k" * 100_000: 1})  # a huge unknown key
    assert "(100,006 characters)" in error["message"]
    error = rejected({"style": "alpha", "style_strength": "9" * 100_000})
    assert "must be a number, got str '999" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages", "/invocations",
                                  "/v1/chat/completions/batch"])
def test_every_generation_endpoint(path):
    assert rejected({"style": "cervantes"}, path=path, stream=True)["param"] == "vllm_xargs.style"


def test_token_generate_endpoint_reads_sampling_params():
    error = rejected({"style": "alpha", "style_mode": "kn"}, path="/inference/v1/generate",
                     location="sampling_params.extra_args")
    assert error["param"] == "sampling_params.extra_args.style_mode" and "unknown style mode 'kn'" in error["message"]


def test_escaped_keys_are_seen():
    body = b'{"prompt": "x", "vllm_xargs": {"\\u0073tyle": "cervantes"}}'
    status, raw, _, _ = run(body)
    assert status == 400 and b"unknown style 'cervantes'" in raw


def test_without_configuration_the_engine_decides(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG)
    monkeypatch.setattr("vllm_ngram_style.validation._active", [])
    assert_passed_untouched(run(request({"style": "cervantes"})), [json.dumps(request({"style": "cervantes"})).encode()])
    broken = types.SimpleNamespace(args=types.SimpleNamespace(api_key=None, additional_config={"ngram_style": []}))
    assert_passed_untouched(run(request({"style": "cervantes"}), app_state=broken),
                            [json.dumps(request({"style": "cervantes"})).encode()])


def test_plain_vllm_additional_config(monkeypatch):
    """`vllm serve --additional-config '{"ngram_style": ...}' --middleware ...` without our file."""
    monkeypatch.delenv(ENV_CONFIG)
    monkeypatch.setattr("vllm_ngram_style.validation._active", [])
    state = types.SimpleNamespace(args=types.SimpleNamespace(
        api_key=None, additional_config={"ngram_style": {"styles": {"gamma": "/p/g.stylepack"}}}))
    status, raw, _, _ = run(request({"style": "alpha"}), app_state=state)
    assert status == 400 and "this server offers: gamma" in json.loads(raw)["error"]["message"]


def test_api_key_is_vllms_decision():
    """With --api-key, a client without the key gets vLLM's 401, not our 400 listing the styles."""
    pytest.importorskip("vllm")
    state = types.SimpleNamespace(args=types.SimpleNamespace(api_key=["sekrit"]))
    raw = json.dumps(request({"style": "cervantes"})).encode()
    assert_passed_untouched(run(raw, app_state=state), [raw])
    assert_passed_untouched(run(raw, app_state=state, headers=[(b"authorization", b"Bearer wrong")]), [raw])
    status, body, _, _ = run(raw, app_state=state, headers=[(b"authorization", b"Bearer sekrit")])
    assert status == 400 and b"cervantes" in body


def test_cors_headers_on_our_answer():
    state = types.SimpleNamespace(args=types.SimpleNamespace(
        api_key=None, allowed_origins=["*"], allow_credentials=False, allowed_methods=["*"], allowed_headers=["*"]))
    status, _, headers, _ = run(request({"style": "cervantes"}), app_state=state,
                                headers=[(b"origin", b"http://example.org")])
    assert status == 400 and headers[b"access-control-allow-origin"] == b"*"


def test_one_bounded_warning_line_per_rejection():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("vllm.ngram_style")
    log.addHandler(handler)
    try:
        rejected({"style": "x" * 100_000})
        rejected({"style": "alpha", "style_strength": 9})
    finally:
        log.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2 and all("\n" not in line and len(line) < 700 for line in lines), lines
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "(vllm_xargs.style_strength): style_strength must be between 0 and 5, got 9" in lines[1]
