"""The CPU op's normalised entropy, compiled (numba): H(softmax(z_r)) / log V per row, adaptive.py's
formula, streamed over each row twice (its max, then the sums) with no [R, V] temporary.

numba's exp is a libm call that does not vectorise (no SVML in pip's llvmlite); a Cephes-style
float32 exp written as a polynomial and bit casts does, so the sums run in SIMD registers. The max
keeps _LANES running maxima for the same reason (a single running max is a serial chain without
fast-math, and fast-math's no-NaN assumption would be wrong here).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .cpu_numeric import f32_from_bits, get_f32, jit

# Reassociation lets LLVM vectorise the sums; no nnan/ninf: -inf logits are legal input.
_SUM_FLAGS = {"reassoc", "nsz", "contract", "arcp"}
_LANES = 16  # independent running maxima: a vectorisable max reduction without fast-math
_BLOCK = 1024  # sums: float32 within a block of this many logits, float64 across blocks
_EXP_LOW = np.float32(-87.0)  # exp(-87) = 1.6e-38: below this a term is 0 next to the row max's 1


@njit(fastmath=_SUM_FLAGS, inline="always")
def _exp_nonpos(d):
    """exp(d) for -87 <= d <= 0 in float32 (Cephes expf: 2^k x polynomial, ~1 ulp), vectorisable; NaN stays NaN."""
    k = np.floor(d * np.float32(1.4426950408889634) + np.float32(0.5))
    r = d - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    k = k if k > np.float32(-127.0) else np.float32(-127.0)  # NaN -> -127: never an undefined int conversion
    return y * f32_from_bits(np.int32((np.int64(k) + 127) << 23))


@njit(fastmath=_SUM_FLAGS, inline="always")
def _entropy_terms(v, m):
    """exp(v - m) and exp(v - m) (v - m): 0 and 0 far below the max (-inf included); NaN for a NaN v."""
    d = v - m
    low = d < _EXP_LOW  # False for NaN, so a NaN logit reaches the sums
    dc = _EXP_LOW if low else d
    e = np.float32(0.0) if low else _exp_nonpos(dc)
    return e, e * dc


@jit(fastmath=_SUM_FLAGS)
def _row_max(row):
    """max of row [V] (as float32), NaN ignored; _LANES running maxima so that it vectorises."""
    width = row.shape[0]
    lanes = np.full(_LANES, -np.inf, np.float32)
    t = 0
    while t + _LANES <= width:
        for j in range(_LANES):
            v = get_f32(row, t + j)
            lanes[j] = v if v > lanes[j] else lanes[j]
        t += _LANES
    m = np.float32(-np.inf)
    for j in range(_LANES):
        m = lanes[j] if lanes[j] > m else m
    for i in range(t, width):
        v = get_f32(row, i)
        m = v if v > m else m
    return m


@jit(fastmath=_SUM_FLAGS)
def _row_sums(row, m):
    """(sum exp(z - m), sum exp(z - m) (z - m)) over row [V]: float32 within fixed-size blocks (a fixed
    trip count vectorises), float64 across them."""
    width = row.shape[0]
    full = width // _BLOCK
    total = 0.0
    weighted = 0.0
    for b in range(full):
        block = row[b * _BLOCK:(b + 1) * _BLOCK]
        s = np.float32(0.0)
        sz = np.float32(0.0)
        for j in range(_BLOCK):
            e, ez = _entropy_terms(get_f32(block, j), m)
            s += e
            sz += ez
        total += s
        weighted += sz
    s = np.float32(0.0)
    sz = np.float32(0.0)
    for j in range(full * _BLOCK, width):
        e, ez = _entropy_terms(get_f32(row, j), m)
        s += e
        sz += ez
    return total + s, weighted + sz


@jit(fastmath=_SUM_FLAGS)
def entropy_rows(x, stride, width, out, lo, hi):
    """out[r] = H(softmax(z_r)) / log(width) for rows [lo, hi) of the flat logits x: two passes over
    each row (its max, then the sums; the row is in cache for the second), no [R, V] temporary.
    H = log S - sum e (z - m) / S with e = exp(z - m), S = sum e. NaN where the torch formula is NaN:
    a NaN or +inf logit, or every logit -inf."""
    inv_log_v = 1.0 / math.log(width)
    for r in range(lo, hi):
        row = x[r * stride:r * stride + width]
        m = _row_max(row)
        if m == np.inf or m == -np.inf:
            out[r] = np.nan
            continue
        total, weighted = _row_sums(row, m)
        out[r] = (math.log(total) - weighted / total) * inv_log_v


@jit(parallel=True, fastmath=_SUM_FLAGS)
def entropy_rows_par(x, stride, width, out, chunks):
    rows = out.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        entropy_rows(x, stride, width, out, c * step, min(rows, (c + 1) * step))
