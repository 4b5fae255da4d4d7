"""The entropy kernel (kernels/entropy.py, interpreter) against adaptive.adaptive_scale, the torch formula.

Tolerance: 2e-6 absolute on the normalised entropy (float32 online softmax vs float32 torch softmax;
both in [0, 1]). Small BLOCK_V so that a row spans several blocks and the running maximum moves.
"""
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from helpers import random_pack
from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.kernels import entropy as ek
from vllm_ngram_style.kernels.launcher import TritonSteering
from vllm_ngram_style.modes import compile_style


@pytest.fixture(scope="module")
def op():
    pack, _ = random_pack(np.random.default_rng(0), 20, 2, top_k=3)
    return TritonSteering([compile_style(pack, "exact")], "cpu", entropy_block=16)


def test_entropy_matches_torch_formula(op):
    g = torch.Generator().manual_seed(1)
    v = 83  # 6 blocks of 16, the last one partial
    z = torch.randn(9, v, generator=g) * 3
    z[1] = torch.linspace(-5, 40, v)  # the maximum keeps moving up: every block rescales
    z[2] = torch.linspace(40, -5, v)  # the maximum is in the first block
    z[3] *= 0.0  # uniform: H = log V exactly
    z[4, :50] = float("-inf")  # masked tokens, a whole block of them first
    z[5, :] = float("-inf")
    z[5, 70] = 2.0  # a single finite logit: H = 0
    z[6] = z[6] * 30 + 1000  # large offset and spread: needs the max subtraction
    z[7, ::2] = float("-inf")
    z[8, 17] = 60.0  # nearly one-hot
    got = op.normalised_entropy(z)
    want = adaptive_scale(z)
    assert got.dtype == torch.float32 and got.shape == (9,)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    assert abs(float(got[3]) - 1.0) < 1e-6 and float(got[5]) == 0.0
    assert float(got[8]) < 0.05 < float(got[0])  # the check discriminates between rows


def test_entropy_edge_rows_and_dtypes(op):
    z = torch.full((2, 40), float("-inf"))
    z[1, 3] = 0.0
    got = op.normalised_entropy(z)
    assert got.tolist() == [0.0, 0.0]  # all masked: 0 (no steering) where torch gives NaN; one token: 0
    assert op.normalised_entropy(torch.zeros(0, 40)).shape == (0,)
    zb = (torch.randn(4, 50) * 2).to(torch.bfloat16)
    torch.testing.assert_close(op.normalised_entropy(zb), adaptive_scale(zb), atol=2e-6, rtol=0)
    wide = torch.randn(3, 64)[:, :50]  # rows 64 apart: a stride that is not V
    torch.testing.assert_close(op.normalised_entropy(wide), adaptive_scale(wide), atol=2e-6, rtol=0)


def test_block_for_small_vocabularies():
    assert ek.block_for(128256, 4096) == 4096
    assert ek.block_for(67, 4096) == 128 and ek.block_for(1, 4096) == 16
    assert math.log2(ek.block_for(1000, 4096)) == 10
