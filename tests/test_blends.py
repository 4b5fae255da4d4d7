"""Style blends through both adapters: a request naming up to 4 styles gets exactly the sum of the
single-style edits, z += row_scale * sum_k lambda_k D_k (adaptive strength and the loop guard apply
to the blend as a whole), in the one op call per step; unsteered rows stay bit-identical.

The oracle works in float64 from the reference op's entries of each style alone, so it shares no
code path with the blend columns of the op under test."""
import os
import random

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from helpers import MODES, Oracle, train_test_packs  # noqa: E402
from test_vllm_protocol import V, _DeviceBuffer, fake_vllm_config, repetitive_tokens  # noqa: E402

from vllm_ngram_style.adaptive import adaptive_scale  # noqa: E402
from vllm_ngram_style.loop_guard import LOOP_GUARD_WINDOW, guard_banned_tokens  # noqa: E402
from vllm_ngram_style.request_args import parse_request_args  # noqa: E402

pytest.importorskip("vllm")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STYLES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def packs(tiny_tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("blend_packs")
    out = train_test_packs(tiny_tokenizer_dir, folder)
    from vllm_ngram_style.pack import save_pack
    from vllm_ngram_style.testing.tiny import sample_text
    from vllm_ngram_style.train import train_pack

    text = folder / "gamma.txt"
    text.write_text(sample_text(300, seed=3))
    pack, _ = train_pack(tiny_tokenizer_dir, [str(text)], orders=2, name="gamma", progress=False)
    save_pack(pack, str(folder / "gamma.stylepack"))
    out["gamma"] = str(folder / "gamma.stylepack")
    return out


def blend_extra(rng):
    r = rng.random()
    if r < 0.15:
        return None
    k = rng.choice([1, 2, 2, 3, 3])
    names = rng.sample(STYLES, k)
    weights = [rng.choice([0.0, 0.2, 0.7, 1.5]) for _ in names]
    extra = ({"style": ",".join(f"{n}:{w}" for n, w in zip(names, weights))} if rng.random() < 0.5 else
             {"style": names, "style_strength": weights})
    if rng.random() < 0.5:
        extra["style_mode"] = rng.choice(MODES)
    if rng.random() < 0.3:
        extra["style_adaptive"] = 1
    if rng.random() < 0.4:
        extra["style_loop_guard"] = rng.choice([2, 3])
        if rng.random() < 0.5:
            extra["style_loop_penalty"] = 2.0
    return extra


def expected_row(oracle, z, extra, tokens, generated):
    """float64 [V]: z + scale * sum_k lambda_k D_k(context), guarded tokens back to z - total x penalty."""
    req = parse_request_args(extra, STYLES, MODES) if extra else None
    out = z.double().clone()
    if req is None or req.total_strength == 0:
        return out
    scale = float(adaptive_scale(z[None])[0]) if req.adaptive else 1.0
    for name, weight in req.components:
        ref = oracle.ref[(name, req.mode)]
        m = ref.max_order - 1
        ctx = torch.tensor([([-1] * m + list(tokens))[len(tokens):] if m else []], dtype=torch.int64).reshape(1, m)
        rows, toks, vals = ref.entries(torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64), ctx)
        keep = toks < out.shape[0]
        out.index_add_(0, toks[keep], vals[keep] * (float(np.float32(weight)) * scale))
    if req.loop_guard:
        hist = torch.tensor([([-1] * LOOP_GUARD_WINDOW + list(generated))[-LOOP_GUARD_WINDOW:]], dtype=torch.int64)
        banned = guard_banned_tokens(hist, req.loop_guard)[0]
        banned = banned[banned >= 0]
        out[banned] = z[banned].double() - float(np.float32(req.total_strength * req.loop_penalty))
    return out


def _check(result, original, expect, rows_checked):
    for i, want in enumerate(expect):
        if torch.equal(want, original[i].double()):
            assert torch.equal(result[i].view(torch.int32), original[i].view(torch.int32)), f"row {i} was written"
        else:
            torch.testing.assert_close(result[i].double(), want, rtol=1e-5, atol=1e-4)
            rows_checked.append(i)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_v1_blends_equal_the_sum_of_single_style_edits(tiny_tokenizer_dir, packs, backend, monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from vllm_ngram_style import NgramStyleLogitsProcessor
    from vllm_ngram_style.kernels import BACKENDS

    if backend not in BACKENDS:
        pytest.skip(f"no {backend} backend in this build")
    monkeypatch.setenv("NGRAM_STYLE_BACKEND", backend)
    proc = NgramStyleLogitsProcessor(fake_vllm_config(tiny_tokenizer_dir, packs), torch.device("cpu"), False)
    oracle = Oracle(packs)
    calls = []
    real_apply = proc.core.op.apply
    proc.core.op.apply = lambda *a, **k: calls.append(1) or real_apply(*a, **k)
    rng = random.Random(5)
    steered = []
    for step in range(12):
        batch = [(blend_extra(rng), repetitive_tokens(rng, rng.randint(1, 10)), []) for _ in range(10)]
        added = [(i, SamplingParams(extra_args=e), p, out) for i, (e, p, out) in enumerate(batch)]
        proc.update_state(BatchUpdate(len(batch), list(range(10)) if step else [], added, []))
        for _ in range(rng.randint(1, 30)):
            for _, p, out in batch:
                out.append(rng.choice((p + out)[-3:]) if rng.random() < 0.8 else rng.randrange(3, 320))
        logits = torch.randn(len(batch), V) * 3
        original = logits.clone()
        result = proc.apply(logits)
        _check(result, original, [expected_row(oracle, original[i], e, p + o, o) for i, (e, p, o) in enumerate(batch)],
               steered)
    assert len(steered) > 60 and len(calls) == 12  # one op call per step, blends or not


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_v2_blends_equal_the_sum_of_single_style_edits(tiny_tokenizer_dir, packs, backend, monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from vllm_ngram_style import NgramStyleLogitsProcessor
    from vllm_ngram_style.kernels import BACKENDS

    if backend not in BACKENDS:
        pytest.skip(f"no {backend} backend in this build")
    monkeypatch.setenv("NGRAM_STYLE_BACKEND", backend)
    S, L = 12, 80  # noqa: N806
    ids = torch.zeros((S, L), dtype=torch.int32)
    plen = torch.zeros(S, dtype=torch.int32)
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=S, vocab_size=V,
                                all_token_ids=_DeviceBuffer(ids), prompt_len=_DeviceBuffer(plen),
                                prefill_len=_DeviceBuffer(plen.clone()), total_len=_DeviceBuffer(plen.clone()))
    proc = NgramStyleLogitsProcessor(fake_vllm_config(tiny_tokenizer_dir, packs), rs)
    oracle = Oracle(packs)
    rng = random.Random(6)
    steered = []
    for step in range(10):
        extras, lengths = [], []
        for s in range(S):  # every slot recycled each step with a new request
            extra = blend_extra(rng)
            prompt = repetitive_tokens(rng, rng.randint(1, 8))
            tokens = prompt + [rng.choice(prompt) for _ in range(rng.randint(0, 40))]
            ids[s].zero_()
            ids[s, :len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
            plen[s] = len(prompt)
            extras.append(extra)
            lengths.append(len(tokens))
            proc.add_request(s, SamplingParams(extra_args=extra))
        proc.apply_staged_writes()
        slots = rng.sample(range(S), S)
        row_slot = torch.tensor(slots, dtype=torch.int32)
        pos = torch.tensor([lengths[s] - 1 for s in slots], dtype=torch.int64)
        ctx = LogitsContext(expanded_idx_mapping=row_slot, idx_mapping=row_slot, idx_mapping_np=np.array(slots),
                            expanded_local_pos=torch.zeros(S, dtype=torch.int32), input_ids=ids[row_slot.long(), pos],
                            pos=pos, seq_lens_upper_bound_np=pos.numpy() + 1)
        logits = torch.randn(S, V) * 3
        original = logits.clone()
        result = proc.apply(logits, ctx)
        expect = []
        for i, s in enumerate(slots):
            tokens = ids[s, :lengths[s]].tolist()
            expect.append(expected_row(oracle, original[i], extras[s], tokens, tokens[int(plen[s]):]))
        _check(result, original, expect, steered)
    assert len(steered) > 60
