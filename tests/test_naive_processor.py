"""The naive per-request processor (benchmark contrast) must steer exactly like the plugin.

Both V1 processors are driven through the same BatchUpdate sequence (adds with mixed styles,
modes and strengths, unsteered rows, short prompts, live output lists growing every step, a
removal, a swap, a re-add into a freed index); every step their logits must agree bit for bit,
steered rows must differ from the input and unsteered rows must be untouched.
"""
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("vllm")
from helpers import train_test_packs  # noqa: E402
from test_vllm_protocol import V, fake_vllm_config  # noqa: E402


@pytest.fixture(scope="module")
def packs(tiny_tokenizer_dir, tmp_path_factory):
    return train_test_packs(tiny_tokenizer_dir, tmp_path_factory.mktemp("naive_packs"))


def _processors(tokenizer_dir, packs):
    from vllm_ngram_style.naive_processor import NaiveStyleLogitsProcessor
    from vllm_ngram_style.vllm_v1 import NgramStyleLogitsProcessor

    cfg = fake_vllm_config(tokenizer_dir, packs)
    return (NgramStyleLogitsProcessor(cfg, torch.device("cpu"), False),
            NaiveStyleLogitsProcessor(cfg, torch.device("cpu"), False))


def test_naive_matches_plugin_step_by_step(tiny_tokenizer_dir, packs, monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor, BatchUpdate, MoveDirectionality

    # Bit for bit against the reference op, whose float64 arithmetic the naive processor shares; the
    # compiled ops (float32 deltas in their tables) match the reference within float32 rounding
    # (tests/test_cpu_kernel.py, tests/test_vllm_protocol.py).
    monkeypatch.setenv("VLLM_NGRAM_STYLE_BACKEND", "reference")
    plugin, naive = _processors(tiny_tokenizer_dir, packs)
    assert isinstance(naive, AdapterLogitsProcessor) and naive.is_argmax_invariant() is False
    rng = random.Random(5)
    extras = [{"style": "alpha", "style_strength": 0.3}, None, {"style": "beta", "style_strength": 1.7},
              {"style": "beta", "style_mode": "paper", "style_strength": 0.6}, {"style": "alpha", "style_strength": 0},
              {"style": "alpha", "style_mode": "paper", "style_strength": 2.5}]
    batch = []  # index -> (extra, prompt, live output list)
    added = []
    for i, extra in enumerate(extras):
        prompt = [rng.randrange(3, 320) for _ in range(1 if i == 2 else rng.randint(2, 10))]  # one shorter than a context
        batch.append((extra, prompt, []))
        added.append((i, SamplingParams(extra_args=extra), prompt, batch[-1][2]))
    updates = {0: BatchUpdate(len(batch), [], added, [])}
    steered_rows = 0
    for step in range(12):
        if step == 5:  # a request leaves; the last one moves into its index
            batch[1] = batch.pop()
            updates[step] = BatchUpdate(len(batch), [1], [], [(len(batch), 1, MoveDirectionality.UNIDIRECTIONAL)])
        if step == 7:
            batch[0], batch[3] = batch[3], batch[0]
            updates[step] = BatchUpdate(len(batch), [], [], [(0, 3, MoveDirectionality.SWAP)])
        if step == 9:  # a new request reuses index 2
            extra, prompt = {"style": "beta", "style_strength": 0.9}, [5, 6, 7, 8]
            batch[2] = (extra, prompt, [])
            updates[step] = BatchUpdate(len(batch), [], [(2, SamplingParams(extra_args=extra), prompt, batch[2][2])], [])
        for proc in (plugin, naive):
            proc.update_state(updates.get(step))
        logits = torch.randn(len(batch), V) * 3
        a, b = plugin.apply(logits.clone()), naive.apply(logits.clone())
        assert torch.equal(a, b), f"step {step}: max diff {(a - b).abs().max()}"
        for i, (extra, _, _) in enumerate(batch):
            if extra and extra.get("style_strength", 0.3) != 0:
                assert not torch.equal(a[i], logits[i])  # every order-1 table matches: a steered row changes
                steered_rows += 1
            else:
                assert torch.equal(b[i].view(torch.int32), logits[i].view(torch.int32))
        for _, prompt, out in batch:  # the engine appends the sampled tokens; repeats make contexts match
            out.append(rng.choice((prompt + out)[-3:]) if rng.random() < 0.7 else rng.randrange(3, 320))
    assert steered_rows >= 40


def test_naive_row_function_matches_dense_formula(tiny_tokenizer_dir, packs):
    """steer_row alone, against the sum of the matched contexts' deltas written out densely."""
    from vllm_ngram_style.modes import compile_style
    from vllm_ngram_style.naive_processor import NaiveTables, steer_row
    from vllm_ngram_style.pack import load_pack

    style = compile_style(load_pack(packs["beta"]), "exact", name="beta")
    tables = NaiveTables(style)
    o2 = style.orders[1]
    ctx2 = [int(t) for t in o2.context_tokens.reshape(-1)[:1]]  # a stored bigram context
    history = [7] + ctx2
    for width in (V, int(style.orders[0].tokens.max())):  # the second drops a matched (unigram) token: narrow logits
        row = torch.zeros(width, dtype=torch.float64)
        steer_row(tables, 0.5, history[:1], history[1:], row)
        expect = torch.zeros(width, dtype=torch.float64)
        for o in style.orders:
            m = o.order - 1
            want = tuple(history[len(history) - m:]) if m else ()
            for c in range(o.offsets.shape[0] - 1):
                if tuple(o.context_tokens.reshape(len(o.offsets) - 1, m)[c].tolist()) == want:
                    for e in range(o.offsets[c], o.offsets[c + 1]):
                        if o.tokens[e] < width:
                            expect[o.tokens[e]] += 0.5 * o.deltas[e]
        assert expect.abs().sum() > 0
        torch.testing.assert_close(row, expect, rtol=1e-12, atol=1e-12)
