"""What the request-checking middleware (vllm_ngram_style.middleware) adds to a request, without a server.

Drives StyleArgsMiddleware through the ASGI protocol around an app that reads the body and
answers, against the same app called directly (the baseline, measured in the same run), for
typical and large bodies; json.loads of the body is shown for scale (vLLM parses every body too).

    python benchmarks/middleware_overhead.py [--repeats 200]
"""
import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vllm_ngram_style.middleware import StyleArgsMiddleware  # noqa: E402
from vllm_ngram_style.config import ENV_CONFIG  # noqa: E402


async def app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def bodies():
    steer = {"style": "alpha", "style_strength": 0.6, "style_loop_guard": 3}
    small = {"model": "m", "prompt": "The knight said", "max_tokens": 64}
    return {
        "small, steered": {**small, "vllm_xargs": steer},
        "small, unsteered": small,
        "small, steered, bad (400)": {**small, "vllm_xargs": {"style": "cervantes"}},
        "1 MB prompt, steered": {**small, "prompt": "word " * 200_000, "vllm_xargs": steer},
        "1 MB prompt, unsteered": {**small, "prompt": "word " * 200_000},
        "100k token ids, steered": {**small, "prompt": list(range(100_000)), "vllm_xargs": steer},
    }


def time_call(handler, raw: bytes, repeats: int) -> float:
    """Median seconds of one request through handler."""
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}

    async def once():
        messages = [{"type": "http.request", "body": raw, "more_body": False}]

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message):
            pass

        await handler(scope, receive, send)

    async def run():
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await once()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    return asyncio.run(run())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"ngram_style": {"styles": {"alpha": "/x/a.stylepack", "beta": "/x/b.stylepack"}}}, f)
    os.environ[ENV_CONFIG] = f.name
    logging.getLogger("vllm.ngram_style").disabled = True  # one warning per 400 is the server's business
    checked = StyleArgsMiddleware(app)
    print(f"{'body':<28} {'size':>10} {'direct':>10} {'middleware':>11} {'added':>10} {'json.loads':>11}")
    for name, body in bodies().items():
        raw = json.dumps(body).encode()
        direct = time_call(app, raw, args.repeats)
        through = time_call(checked, raw, args.repeats)
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            json.loads(raw)
            samples.append(time.perf_counter() - t0)
        parse = statistics.median(samples)
        print(f"{name:<28} {len(raw):>10,} {direct * 1e6:>8.0f}us {through * 1e6:>9.0f}us "
              f"{(through - direct) * 1e6:>8.0f}us {parse * 1e6:>9.0f}us")
    os.unlink(f.name)


if __name__ == "__main__":
    main()
