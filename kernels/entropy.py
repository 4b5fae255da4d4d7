"""Normalised row entropy H(softmax(z_r)) / log V in one read of the logits, no [R, V] temporary.

Adaptive strength (vllm_ngram_style/adaptive.py) needs each row's entropy before the edit. A torch
softmax would allocate a [R, V] float32 temporary every step (525 MB at R=1024, V=128256) that
vLLM's memory profile never sees, and read/write the logits several times. This kernel streams
each row once with an online softmax (one program per row, BLOCK_V logits per step): the running
maximum m (one cross-lane reduction per step) and, per lane, S = sum exp(z - m) and
T = sum exp(z - m)(z - m), summed over the lanes once at the end; when the maximum grows to m',
both rescale by exp(m - m') (T also gains (m - m') S). Then H = log S - T / S.

-inf logits (masked tokens) contribute nothing; a row that is -inf everywhere gets 0 (no
steering) where the torch formula would give NaN. NaN or +inf logits give NaN, as there.
"""
from __future__ import annotations

import triton
import triton.language as tl



@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


# Triton's own combine functions where present (the interpreter reduces those with numpy; see
# steer_kernel.py and interpreted.py), else ours.
_SUM = getattr(tl.standard, "_sum_combine", _add)
_MAX = getattr(tl.standard, "_elementwise_max", _maximum)

ARGS = ("logits_ptr", "logits_stride", "V", "out_ptr")
CONSTEXPR_NAMES = ("BLOCK_V",)


# Triton's specialisation stays on for every argument: 16-byte-aligned pointers and a V and row
# stride divisible by 16 (the usual vocabularies) let the compiler prove whole 4-lane groups in
# bounds and use 16-byte vector loads. The launcher keys its compiled kernels on these properties
# (fast_launch.signature_key), so a kernel specialised for aligned rows never runs on unaligned ones.
SPECIALISED = (0, 1, 2, 3)


@triton.jit
def entropy_rows(logits_ptr,  # [R, V] float, rows logits_stride apart, last dim contiguous; read only
                 logits_stride, V,
                 out_ptr,  # [R] float32 output
                 BLOCK_V: tl.constexpr):  # logits per step (a power of two)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    lanes = tl.arange(0, BLOCK_V)
    m = tl.reduce(tl.zeros([BLOCK_V], tl.float32), 0, _MAX) + float("-inf")  # running maximum (scalar)
    s = tl.zeros([BLOCK_V], tl.float32)  # per lane: sum exp(z - m) over the logits this lane read
    t = tl.zeros([BLOCK_V], tl.float32)  # per lane: sum exp(z - m) * (z - m)
    for start in range(0, V, BLOCK_V):
        idx = start + lanes
        z = tl.load(row_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.reduce(z, 0, _MAX))  # the one cross-lane step per block
        ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # == m_new once a finite logit was met
        finite = z > float("-inf")
        d = tl.where(finite, z - ref, 0.0)
        e = tl.where(finite, tl.exp(d), 0.0)
        dm = tl.where(m > float("-inf"), m - ref, 0.0)  # <= 0; m is -inf only while s and t are still 0
        alpha = tl.exp(dm)
        t = alpha * (t + dm * s) + e * d
        s = alpha * s + e
        m = m_new
    s_row = tl.reduce(s, 0, _SUM)
    ss = tl.where(s_row > 0.0, s_row, 1.0)
    h = tl.log(ss) - tl.where(s_row > 0.0, tl.reduce(t, 0, _SUM), 0.0) / ss
    h = tl.where(h < 0.0, 0.0, h)  # rounding can dip below 0; NaN stays NaN
    tl.store(out_ptr + row, h / tl.log(V.to(tl.float32)))


def kernel_for(device):
    """The entropy kernel to launch for tensors on ``device`` (interpreted on CPU)."""
    import sys

    from .interpreted import interpreted_copy, is_interpreted

    mod = sys.modules[__name__]
    if getattr(device, "type", str(device)) == "cpu" and not is_interpreted(entropy_rows):
        mod = interpreted_copy(mod)
    return mod.entropy_rows


def block_for(vocab: int, block_v: int) -> int:
    """BLOCK_V for a vocabulary: the configured block, or the next power of two >= V when that is smaller."""
    return min(block_v, 1 << max(4, (max(1, vocab) - 1).bit_length()))
