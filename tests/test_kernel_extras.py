"""The history kernel's fused extras (adaptive strength, loop guard, loop penalty read per slot in the
kernel) against the steering core's torch path (adaptive.py, loop_guard.py) on the same inputs.

The torch path is the core with the reference op (it runs the extras as torch ops); the fused path
is the core with the Triton op (interpreter). Guarded tokens must come back bit for bit (their
unsteered logit, minus the penalty); everything else within 2e-5 + 1e-5 relative; rows of
unsteered slots untouched.
"""
import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from helpers import random_pack
from vllm_ngram_style.kernels import launcher as kl
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.loop_guard import LOOP_GUARD_WINDOW, guard_banned_tokens
from vllm_ngram_style.kernels.reference import history_window
from vllm_ngram_style.request_args import MAX_LOOP_GUARD
from vllm_ngram_style.steering_core import SteeringCore


@pytest.fixture(scope="module")
def cores():
    rng = np.random.default_rng(31)
    packs = {"a": random_pack(rng, 30, 3, top_k=8, name="a")[0], "b": random_pack(rng, 30, 3, top_k=8, name="b")[0]}
    fused = SteeringCore(packs, ("exact", "paper"), "cpu", backend="triton")
    torch_path = copy.copy(fused)
    torch_path.op = ReferenceSteering(fused.variants, "cpu")
    assert fused.op.fuses_history_extras and not getattr(torch_path.op, "fuses_history_extras", False)
    return fused, torch_path


def _state(rng, s_slots=9, length=96, vocab=30):
    ids = torch.tensor(rng.integers(0, 6, size=(s_slots, length)), dtype=torch.int32)  # few tokens: many repeats
    prompt_len = torch.tensor(rng.integers(0, 30, size=s_slots), dtype=torch.int32)
    slot_variant = torch.tensor([0, 3, 1, 2, -1, 0, 1, 2, 3], dtype=torch.int32)[:s_slots]  # slot 4 unsteered
    slot_strength = torch.tensor(rng.uniform(0.2, 1.0, s_slots), dtype=torch.float32)
    slot_adaptive = torch.tensor(rng.integers(0, 2, size=s_slots), dtype=torch.int32)
    slot_guard = torch.tensor([2, 3, 4, 8, 0, 3, 2, 4, 2][:s_slots], dtype=torch.int32)
    slot_penalty = torch.tensor(rng.choice([0.0, 0.7, 2.0], size=s_slots), dtype=torch.float32)
    # slot 6 (2-gram guard, newest position 40): generated tokens 30..40 all distinct but the last two, so only
    # the newest window (19, 19) bans a token
    prompt_len[6] = 30
    ids[6, 30:41] = torch.tensor(list(range(10, 20)) + [19], dtype=torch.int32)
    return ids, prompt_len, slot_variant, slot_strength, slot_adaptive, slot_guard, slot_penalty


@pytest.mark.parametrize("penalty", [False, True])
def test_fused_extras_match_the_torch_path(cores, penalty):
    fused, torch_path = cores
    rng = np.random.default_rng(32 + penalty)
    ids, prompt_len, sv, ss, sa, sg, sp = _state(rng)
    s_slots, length = ids.shape
    row_slot = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 2], dtype=torch.int32)  # (the torch path needs valid slots)
    row_pos = torch.tensor([95, 90, 80, 70, 60, 50, 40, 35, 3, 20, 1])  # the last rows: short histories
    r = row_slot.shape[0]
    logits = torch.randn(r, 30) * 2
    sizes = sorted({int(g) for g in sg.tolist() if g})
    kw = dict(slot_adaptive=sa, slot_guard=sg, guard_sizes=sizes, prompt_len=prompt_len,
              slot_guard_penalty=sp if penalty else None)
    got = fused.apply_from_history(logits.clone(), row_slot, row_pos, ids, sv, ss, **kw)
    want = torch_path.apply_from_history(logits.clone(), row_slot, row_pos, ids, sv, ss, **kw)
    # the banned tokens, as the torch path computes them
    safe = row_slot.long()
    hist = history_window(ids, row_slot.long(), row_pos, LOOP_GUARD_WINDOW, prompt_len[safe])
    banned_mask = torch.zeros(r, 30, dtype=torch.bool)
    for g in sizes:
        own = (sg[safe] == g)[:, None]
        banned = guard_banned_tokens(torch.where(own, hist, torch.full_like(hist, -1)), g)
        rows = torch.arange(r)[:, None].expand_as(banned)
        banned_mask[rows[banned >= 0], banned[banned >= 0]] = True
    assert banned_mask.sum() >= 8, "the check needs guarded tokens"
    assert banned_mask[6].nonzero().flatten().tolist() == [19]
    assert torch.equal(got[banned_mask].view(torch.int32), want[banned_mask].view(torch.int32))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    assert (got[banned_mask] != logits[banned_mask]).any() == penalty  # the penalty moved them; else restored
    unsteered = sv[safe] < 0
    assert torch.equal(got[unsteered].view(torch.int32), logits[unsteered].view(torch.int32))
    assert (got[~unsteered] != logits[~unsteered]).any(1).all()


def test_fused_extras_bad_shapes_and_constants(cores):
    fused, _ = cores
    op = fused.op
    ids = torch.zeros(4, 10, dtype=torch.int32)
    args = (torch.zeros(2, 30), torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int64), ids,
            torch.zeros(4, dtype=torch.int32), torch.ones(4))
    with pytest.raises(ValueError, match="slot_guard must be"):
        op.apply_from_history(*args, slot_guard=torch.zeros(3, dtype=torch.int32), prompt_len=torch.zeros(4))
    with pytest.raises(ValueError, match="needs prompt_len"):
        op.apply_from_history(*args, slot_guard=torch.zeros(4, dtype=torch.int32))
    assert kl.MAX_GUARD == MAX_LOOP_GUARD  # the kernel checks every n-gram size a request may ask for
