"""Tensor parallelism on CPU: the same steered and unsteered greedy tokens at TP=2 as at TP=1.

Every TP rank builds its own processor (each worker's sampler runs it), so each loads the packs and
compiles its tables; the logits every rank sees are the same all-gathered rows, so the edits agree.
vllm-cpu 0.32 refuses TP=2 on a 2-core machine ("Not enough allowed NUMA nodes to bind threads of
2 local CPUWorkers") unless each worker's threads are bound by hand: VLLM_CPU_OMP_THREADS_BIND="0|1".
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
from helpers import train_test_packs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory):
    """A tiny random Llama with 4 attention heads and 2 KV heads, so both split over 2 ranks."""
    from vllm_ngram_style.testing.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tp_model")), hidden=128)


def _run(model, packs, tp, dp=1):
    cpus = os.cpu_count() or 1
    bind = "|".join(str(i % cpus) for i in range(tp * dp))
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1",
               VLLM_NO_USAGE_STATS="1", VLLM_CPU_OMP_THREADS_BIND=bind, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "parallel_run.py"), model, json.dumps(packs),
                          str(tp), str(dp)], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, f"TP={tp} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_tensor_parallel_2_equals_tp_1(tp_model, tmp_path):
    packs = train_test_packs(tp_model, tmp_path)
    one = _run(tp_model, packs, 1)
    two = _run(tp_model, packs, 2)
    assert len(one) == 36 and all(len(t) == 40 for t in one)
    assert two == one, [i for i, (a, b) in enumerate(zip(one, two)) if a != b]
    # the steering changed most steered outputs (so equality is about steered text, not only unsteered)
    changed = sum(one[i] != one[i - i % 6] for i in range(36) if i % 6)
    assert changed >= 20, changed
