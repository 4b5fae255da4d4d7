"""The fast launch path's self-check and fallback (kernels/fast_launch.py), on CPU.

There is no compiled kernel on CPU (the interpreter returns none), so these tests stand in for it:
``standard`` is wrapped to hand back a fake CompiledKernel, and the fast launch is either made to
do the right thing (it runs the interpreter too), to do nothing (a silently wrong launch), or left
as the real ``run_compiled``: as is, it fails on CPU where it asks Triton's driver for the CUDA stream;
with the stream stood in for, it calls the fake kernel's ``run`` with Triton's private argument list,
which raises as a changed API would. Every step's output must equal the reference, with exactly one warning
when the fast path is given up.
"""
import logging
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from helpers import random_pack
from test_kernel import SMALL, contexts
from vllm_ngram_style.kernels import fast_launch as fl
from vllm_ngram_style.kernels.launcher import TritonSteering
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.modes import compile_style


class FakeCompiled:
    function = object()
    packed_metadata = (4, 1, 0)

    def run(self, *args):
        raise TypeError("run() takes a different argument list in this Triton")  # what a changed API would do


def _case(seed=21):
    rng = np.random.default_rng(seed)
    pack, docs = random_pack(rng, 30, 3, top_k=6)
    variants = [compile_style(pack, "exact"), compile_style(pack, "paper")]
    r = 8
    ctx = contexts(rng, docs, r, 2)
    variant = torch.tensor(rng.integers(0, 2, size=r))
    strength = torch.tensor(rng.uniform(0.3, 1.0, r), dtype=torch.float32)
    return variants, (torch.randn(r, 30), variant, strength, ctx)


def _forced_fast(ts, kind, fast_behaviour):
    """Put launcher ``kind`` on the fast path with a fake compiled kernel; fast_behaviour: 'right',
    'silent' (writes nothing), 'real' (the real run_compiled: raises on CPU) or 'api-changed' (the real
    run_compiled up to the fake kernel's run, which raises TypeError)."""
    launcher = ts.launchers[kind]
    launcher.path = "fast"
    real_standard = launcher.standard

    def standard(grid, args, consts):
        real_standard(grid, args, consts)
        return FakeCompiled()

    launcher.standard = standard
    if fast_behaviour == "right":
        launcher.run_compiled = lambda compiled, grid, args, consts, *raw: real_standard(grid, args, consts)
    elif fast_behaviour == "silent":
        launcher.run_compiled = lambda compiled, grid, args, consts, *raw: None
    elif fast_behaviour == "api-changed":
        launcher.stream = lambda: 0
    return launcher


def test_fast_path_used_after_passing_its_check(caplog):
    variants, (logits, variant, strength, ctx) = _case()
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    launcher = _forced_fast(ts, "context", "right")
    want = ref.apply(logits.clone(), variant, strength, ctx)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            torch.testing.assert_close(ts.apply(logits.clone(), variant, strength, ctx), want, atol=2e-5, rtol=1e-5)
    assert launcher.path == "fast" and launcher.fast_launches == 2 and len(launcher.compiled) == 1
    assert not [r for r in caplog.records if "fast launch path" in r.getMessage()]


@pytest.mark.parametrize("behaviour", ["real", "api-changed", "silent"])
def test_failed_check_falls_back_with_one_warning(caplog, behaviour):
    variants, (logits, variant, strength, ctx) = _case()
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    launcher = _forced_fast(ts, "context", behaviour)
    want = ref.apply(logits.clone(), variant, strength, ctx)
    assert (want != logits).any(dim=1)[: fl.PROBE_ROWS].any()  # the probe rows are steered: the check can see
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # every step right, the first one included (applied once, not twice)
            torch.testing.assert_close(ts.apply(logits.clone(), variant, strength, ctx), want, atol=2e-5, rtol=1e-5)
    warnings = [r for r in caplog.records if "fast launch path" in r.getMessage()]
    assert len(warnings) == 1 and launcher.path == "standard" and launcher.fast_launches == 0
    assert {"real": "self-check raised", "api-changed": "raised TypeError", "silent": "differs"}[behaviour] \
        in launcher.failure
    assert ts.launchers["history"].path == "standard"  # the others are untouched (CPU: standard anyway)


def test_later_fast_failure_falls_back_and_applies_once(caplog):
    variants, (logits, variant, strength, ctx) = _case()
    ts, ref = TritonSteering(variants, "cpu", **SMALL), ReferenceSteering(variants)
    launcher = _forced_fast(ts, "context", "right")
    want = ref.apply(logits.clone(), variant, strength, ctx)
    ts.apply(logits.clone(), variant, strength, ctx)  # standard + a passing self-check

    def broken(*args):
        raise RuntimeError("launcher changed")

    launcher.run_compiled = broken
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            torch.testing.assert_close(ts.apply(logits.clone(), variant, strength, ctx), want, atol=2e-5, rtol=1e-5)
    assert len([r for r in caplog.records if "fast launch path" in r.getMessage()]) == 1
    assert launcher.path == "standard" and "launcher changed" in launcher.failure


def test_entropy_launcher_check_poisons_its_output(caplog):
    """The entropy kernel writes a fresh output: the self-check fills both copies with NaN first, so a
    fast launch that writes nothing cannot pass by comparing two copies of the same garbage."""
    variants, (logits, *_rest) = _case()
    ts = TritonSteering(variants, "cpu", entropy_block=16)
    launcher = _forced_fast(ts, "entropy", "silent")
    want = ts.normalised_entropy.__func__  # noqa: F841  (the method itself, for clarity below)
    from vllm_ngram_style.adaptive import adaptive_scale

    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            torch.testing.assert_close(ts.normalised_entropy(logits), adaptive_scale(logits), atol=2e-6, rtol=0)
    assert launcher.path == "standard" and "differs" in launcher.failure


def test_signature_key_tracks_what_triton_specialises():
    a = torch.zeros(64)
    key = fl.signature_key((a, 7, 1 << 40), (3,))
    assert key == (3, torch.float32, False, True)
    spec = frozenset({0, 1})
    assert fl.signature_key((a, 32), (), spec)[-2:] == (True, (True, False))
    assert fl.signature_key((a[1:], 1), (), spec)[-2:] == (False, (False, True))  # 4-byte offset: unaligned
