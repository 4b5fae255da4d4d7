"""ASGI middleware: a bad style argument is an HTTP 400 before vLLM starts a response.

vLLM validates logits-processor arguments (our ``validate_params``) when a request reaches the
engine client. For a streaming request that is inside the response generator, after the
``200 OK`` headers went out: the client gets an error event in a 200 stream (the openai client
raises a bare APIError) and the server logs a traceback. This middleware reads the raw JSON body
of the generation endpoints, runs the same parser (request_args.parse_request_args) on the style
keys of ``vllm_xargs`` and answers 400 in the OpenAI error format, streaming or not, with one
warning line in the log. Seeing the raw JSON, it also rejects what vLLM's pydantic layer would
erase (``true`` where a number belongs, integers too long to convert) naming the key.

``vllm-ngram-style serve`` installs it (``--middleware vllm_ngram_style.middleware.StyleArgsMiddleware``)
and points NGRAM_STYLE_CONFIG at the resolved configuration, which it reads through
validation.config_for_validation() (with plain vLLM and no such file: the styles of vLLM's own
--additional-config, read once). It passes everything else to vLLM untouched and replays
the body it read: other paths and methods, non-JSON bodies, bodies without style keys, malformed
JSON (vLLM answers it), bodies over MAX_INSPECTED_BYTES (streamed through, not buffered), and,
when vLLM requires an API key, requests without a valid one (vLLM answers 401, so an unauthorised
client learns nothing about the styles).

Import-light (json, logging, os): vLLM imports it in the API process; starlette and vLLM's
authentication helper are imported only when needed.
"""
from __future__ import annotations

import json
import logging
import os
from collections import deque

from .errors import ConfigError, RequestError

logger = logging.getLogger("vllm.ngram_style")  # under vLLM's logger: its handler and format

# Where each generation endpoint carries the extras that become SamplingParams.extra_args.
XARGS_LOCATION = {
    "/v1/completions": ("vllm_xargs",),
    "/v1/chat/completions": ("vllm_xargs",),
    "/v1/chat/completions/batch": ("vllm_xargs",),
    "/v1/responses": ("vllm_xargs",),
    "/v1/messages": ("vllm_xargs",),  # Anthropic-style
    "/invocations": ("vllm_xargs",),  # SageMaker: a completions or chat body
    "/inference/v1/generate": ("sampling_params", "extra_args"),
}
MAX_INSPECTED_BYTES = 32 << 20  # larger bodies go through uninspected: vLLM's validate_params still runs
MAX_LOGGED_CHARS = 400
_UNSET = object()


class StyleArgsMiddleware:
    def __init__(self, app):
        self.app = app
        self._auth = None  # (tokens, verifier) once computed
        self._from_args = _UNSET  # the configuration in vLLM's --additional-config, once read

    async def __call__(self, scope, receive, send):
        location = self._location(scope)
        if location is None:
            return await self.app(scope, receive, send)
        messages, complete = await _read_body(receive)
        replay = _Replay(messages, receive)
        error = _check(b"".join(m.get("body", b"") for m in messages), location,
                       lambda: self._config(scope)) if complete else None
        if error is None or not self._authorized(scope):
            return await self.app(scope, replay, send)
        message, key = error
        param = ".".join(location + ((key,) if key else ()))
        logger.warning("vllm-ngram-style: HTTP 400 for POST %s (%s): %s", scope["path"], param,
                       message if len(message) <= MAX_LOGGED_CHARS else message[:MAX_LOGGED_CHARS] + "...")
        body = {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}
        await _with_cors(scope, _json_response(400, body))(scope, replay, send)

    @staticmethod
    def _location(scope):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        location = XARGS_LOCATION.get(path)
        if location is None:
            return None
        headers = dict(scope.get("headers") or ())
        media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if media != b"application/json":  # vLLM answers 415 itself
            return None
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_INSPECTED_BYTES:
            return None
        return location

    def _config(self, scope):
        """The server's StyleConfig, or None when none is visible from here (the engine decides)."""
        from .config import read_config
        from .validation import config_for_validation

        try:
            cfg = config_for_validation()
            if cfg is None:
                if self._from_args is _UNSET:
                    additional = getattr(_vllm_args(scope), "additional_config", None)
                    self._from_args = read_config(additional if isinstance(additional, dict) else None, environ={})
                cfg = self._from_args
        except ConfigError:  # a broken configuration: the engine refuses to start, not our business here
            cfg = None
        return cfg

    def _authorized(self, scope) -> bool:
        """Whether vLLM's API-key check (--api-key / VLLM_API_KEY) would let this request through."""
        args = _vllm_args(scope)
        if self._auth is None:
            tokens = [t for t in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]) if t]
            verifier = None
            if tokens:
                try:
                    from vllm.entrypoints.serve.middleware.authenticate import GUARDED_PREFIX, AuthenticationMiddleware
                    verifier = (AuthenticationMiddleware(None, tokens), GUARDED_PREFIX)
                except ImportError:  # another vLLM layout: let vLLM decide about every such request
                    verifier = False
            self._auth = (tokens, verifier)
        tokens, verifier = self._auth
        if not tokens:
            return True
        if not verifier:
            return False
        from starlette.datastructures import Headers

        checker, guarded = verifier
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        return not path.startswith(guarded) or checker.verify_token(Headers(scope=scope))


def _vllm_args(scope):
    """vLLM's parsed command line (app.state.args of the FastAPI app), or None."""
    return getattr(getattr(scope.get("app"), "state", None), "args", None)


def _check(body: bytes, location: tuple, config) -> tuple | None:
    """(message, key) when the body's style arguments are bad, else None (also: not ours to judge).
    config() -> the StyleConfig or None."""
    if b"style" not in body and b"\\u" not in body:  # a key "style..." is spelt out or \u-escaped
        return None
    from .request_args import KNOWN_KEYS, is_style_key, loads_request_json, parse_request_args

    try:
        extras = loads_request_json(body)
    except (ValueError, RecursionError):  # malformed JSON: vLLM's own 400
        return None
    for name in location:
        extras = extras.get(name) if isinstance(extras, dict) else None
    if not isinstance(extras, dict) or not any(is_style_key(k) for k in extras):
        return None  # absent, or not an object: vLLM's validation answers a wrong type
    cfg = config()
    if cfg is None:  # no configuration visible here: the engine's validate_params decides
        return None
    try:
        parse_request_args(extras, cfg.names, cfg.modes)
    except RequestError as exc:
        return str(exc), exc.key if exc.key in KNOWN_KEYS else None  # a client's unknown key may be huge
    return None


async def _read_body(receive):
    """The request's messages as received, up to MAX_INSPECTED_BYTES. -> (messages, complete)."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away
            return messages, False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, True
        if size > MAX_INSPECTED_BYTES:
            return messages, False


class _Replay:
    """receive() for the app: the messages already read, once each, then the client's own receive."""

    def __init__(self, messages, receive):
        self._pending = deque(messages)
        self._receive = receive

    async def __call__(self):
        if self._pending:
            return self._pending.popleft()
        return await self._receive()


def _json_response(status: int, content: dict):
    payload = json.dumps(content, ensure_ascii=False).encode("utf-8")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def _with_cors(scope, app):
    """Our answer with the CORS headers vLLM's CORSMiddleware (inside this one) would have added."""
    args = _vllm_args(scope)
    if args is None or not any(k == b"origin" for k, _ in scope.get("headers") or ()):
        return app
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, allow_origins=args.allowed_origins, allow_credentials=args.allow_credentials,
                          allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)
