"""The CPU kernel's compiled loops (numba): the steering contract over gpu_tables' flat buffer, and
the streaming normalised entropy. kernels/cpu_kernel.py checks inputs and calls these.

Semantics mirror the Triton kernel (steer_kernel.py) and the host mirror gpu_tables.lookup_host:
order 1 is a direct index, orders n >= 2 hash the packed key (same wrapping int64 arithmetic) and
probe linearly from the home slot, stopping at an empty slot or after O_PROBE_BLOCKS * probe slots,
comparing the FULL key; a context's entries run until the LAST_FLAG entry; tokens >= V are
skipped; variant ids outside [0, num_variants), slots outside [0, S) and zero strengths add
nothing; history positions outside [0, L) and negative or too-wide tokens are missing. A row with
no active column is never read or written.

Arithmetic: each entry adds float32(strength x delta) to the logit (the product is exact in float64,
so this equals a correctly rounded float32 product), orders in ascending order and, within an
order, columns in ascending order: the accumulation order of the reference op's index_put_, so
with the same (float32) deltas the result is bit-identical to it.

Logits arrive as a flat 1-D view (row r starts at r * stride): float32, float64, or the raw bits of
bfloat16 (int16 view) / float16 (uint16 view), which numpy and numba lack; their arithmetic is
done in float32 and rounded back to nearest-even.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .gpu_tables import (H_ENT_BASE, H_NUM_ENTRIES, H_NUM_VARIANTS, H_TB, H_UNI_BASE, HEADER_WORDS, LAST_FLAG,
                         MULT_A, MULT_B, O_HOME_RANGE, O_PROBE_BLOCKS, O_SEED, O_SLOT_BASE, O_TOTAL_SLOTS, O_WORDS,
                         ORDER_FIELDS)

# Reassociation lets LLVM vectorise the entropy's sums; no nnan/ninf: -inf logits are legal input.
_SUM_FLAGS = {"reassoc", "nsz", "contract", "arcp"}
_LANES = 16  # independent running maxima: a vectorisable max reduction without fast-math
_BLOCK = 1024  # entropy sums: float32 within a block of this many logits, float64 across blocks
_EXP_LOW = np.float32(-87.0)  # exp(-87) = 1.6e-38: below this a term is 0 next to the row max's 1


def _jit(**opts):
    """njit with an on-disk cache where one can be written (the source tree, else numba's user-wide
    cache dir); without it every process compiles afresh (a few seconds, once)."""
    opts = dict(nogil=True, error_model="numpy", **opts)

    def wrap(fn):
        try:
            return njit(cache=True, **opts)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**opts)(fn)

    return wrap


# ---- bit casts (LLVM instructions: no libm, vectorisable) ----------------------------------------

@intrinsic
def _f32_from_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _f16_to_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_f16(typingctx, x):
    def codegen(context, builder, sig, args):  # fptrunc rounds to nearest-even, as torch's .half() does
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@njit(inline="always")
def _bf16_to_f32(x):
    return _f32_from_bits(np.int32((np.int64(x) & 0xFFFF) << 16))


@njit(inline="always")
def _f32_to_bf16(y):
    u = np.int64(_f32_bits(y)) & 0xFFFFFFFF
    if y != y:
        return np.int16(0x7FC0)  # torch's canonical bfloat16 NaN
    return np.int16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)  # round to nearest-even


# ---- element access by logits dtype ----------------------------------------------------------------

def _get(a, i):
    """a[i] as float32 (the precision of adaptive.py's formula, which computes in float32)."""


def _add(a, i, s, d):
    """a[i] += float(s * d) in a's precision (float32 for the 16-bit formats), rounded once per add."""


@overload(_get, inline="always")
def _get_impl(a, i):
    dt = a.dtype
    if dt == types.float32:
        return lambda a, i: a[i]
    if dt == types.float64:
        return lambda a, i: np.float32(a[i])
    if dt == types.int16:
        return lambda a, i: _bf16_to_f32(a[i])
    if dt == types.uint16:
        return lambda a, i: _f16_to_f32(a[i])
    return None


@overload(_add, inline="always")
def _add_impl(a, i, s, d):
    dt = a.dtype
    if dt == types.float32:
        def add32(a, i, s, d):
            a[i] = a[i] + np.float32(np.float64(s) * np.float64(d))
        return add32
    if dt == types.float64:
        def add64(a, i, s, d):
            a[i] = a[i] + np.float64(s) * np.float64(d)
        return add64
    if dt == types.int16:
        def add_bf16(a, i, s, d):
            a[i] = _f32_to_bf16(_bf16_to_f32(a[i]) + np.float32(np.float64(s) * np.float64(d)))
        return add_bf16
    if dt == types.uint16:
        def add_f16(a, i, s, d):
            a[i] = _f32_to_f16(_f16_to_f32(a[i]) + np.float32(np.float64(s) * np.float64(d)))
        return add_f16
    return None


# ---- lookups and the per-row edit ------------------------------------------------------------------

@_jit()
def max_key_words(blob, max_order):
    """Most 64-bit words of any order's key (the size of the key scratch array)."""
    most = 1
    for n in range(2, max_order + 1):
        most = max(most, blob[HEADER_WORDS + ORDER_FIELDS * (n - 2) + O_WORDS])
    return most


@_jit()
def _find(blob, probe, n, v, ages, words):
    """Entry index (relative to the entry array) of order n's context (v, ages[:n-1]), or -1.
    ages [>= n-1] int64: tokens by age (0 = newest), all valid here; words [>= W_n] int64 scratch."""
    hb = HEADER_WORDS + ORDER_FIELDS * (n - 2)
    home_range = blob[hb + O_HOME_RANGE]
    if home_range <= 0:
        return -1
    tb, vb, sb, k0, kw = blob[H_TB], blob[H_TB + 1], blob[H_TB + 2], blob[H_TB + 3], blob[H_TB + 4]
    nw = blob[hb + O_WORDS]
    w0 = v << sb
    for w in range(1, nw):
        words[w] = 0
    for a in range(n - 1):  # key fields: gpu_tables.KeyLayout.pack
        if a < k0:
            w0 |= ages[a] << (sb + vb + a * tb)
        else:
            j = a - k0
            words[1 + j // kw] |= ages[a] << ((j % kw) * tb)
    words[0] = w0
    h = blob[hb + O_SEED]  # gpu_tables.hash_words / home_slot, wrapping int64
    for w in range(nw):
        h = (h ^ words[w]) * MULT_A
        h = h ^ (h >> 29)
    h = h * MULT_B
    home = (((h >> 32) & 0xFFFFFFFF) * home_range) >> 32
    limit = min(blob[hb + O_TOTAL_SLOTS], home + blob[hb + O_PROBE_BLOCKS] * probe)
    base = blob[hb + O_SLOT_BASE]
    key0 = w0 >> sb
    for pos in range(home, limit):
        p = base + pos * nw
        stored = blob[p]
        if stored < 0:  # an empty slot ends the run: the key is absent
            return -1
        if (stored >> sb) == key0:
            w = 1
            while w < nw and blob[p + w] == words[w]:
                w += 1
            if w == nw:
                return stored & ((np.int64(1) << sb) - 1)
    return -1


@_jit()
def _add_entries(out, row0, width, blob, i, end, s):
    """Add s x delta for the context whose first entry is blob[i], up to its LAST_FLAG entry."""
    while i < end:
        e = blob[i]
        tok = e & 0x7FFFFFFF
        if tok < width:  # a pack's vocabulary may be wider than the logits
            _add(out, row0 + tok, s, _f32_from_bits(np.int32(e >> 32)))
        if e & LAST_FLAG:
            return
        i += 1


@_jit()
def _active(vs, ss, has_scale, sc, nv):
    for k in range(vs.shape[0]):
        s = ss[k] * sc if has_scale else ss[k]
        if 0 <= vs[k] < nv and s != 0:
            return True
    return False


@_jit()
def _steer_row(out, row0, width, blob, probe, max_order, vs, ss, has_scale, sc, ages, words):
    """One row: vs / ss [K] variant ids / strengths, sc its row scale; ages [max_order-1] int64 context."""
    nv = blob[H_NUM_VARIANTS]
    tb = blob[H_TB]
    ent0 = blob[H_ENT_BASE]
    end = ent0 + blob[H_NUM_ENTRIES]
    good = 0  # orders up to good + 1 have a valid context (a missing or too-wide token is in no key)
    while good < max_order - 1 and ages[good] >= 0 and (ages[good] >> tb) == 0:
        good += 1
    for n in range(1, good + 2):
        for k in range(vs.shape[0]):  # within an order, columns in order: the reference's accumulation order
            v = np.int64(vs[k])
            s = ss[k] * sc if has_scale else ss[k]
            if v < 0 or v >= nv or s == 0:
                continue
            start = blob[blob[H_UNI_BASE] + v] if n == 1 else _find(blob, probe, n, v, ages, words)
            if start >= 0:
                _add_entries(out, row0, width, blob, ent0 + start, end, s)


# ---- the two context sources, over a range of rows -------------------------------------------------

@_jit()
def steer_context_rows(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                       col0, lo, hi):
    """Rows [lo, hi): variant / strength [R, K], scale [R] (read when has_scale), context [R, C] int with
    the max_order-1 context tokens in columns col0.. (oldest first)."""
    m = max_order - 1
    nv = blob[H_NUM_VARIANTS]
    ages = np.empty(max(m, 1), np.int64)  # [m] tokens by age
    words = np.empty(max_key_words(blob, max_order), np.int64)
    for r in range(lo, hi):
        sc = scale[r] if has_scale else scale[0]  # scale: a 1-element dummy when unused
        if not _active(variant[r], strength[r], has_scale, sc, nv):
            continue
        for a in range(m):
            ages[a] = context[r, col0 + m - 1 - a]
        _steer_row(out, r * stride, width, blob, probe, max_order, variant[r], strength[r], has_scale, sc, ages,
                   words)


@_jit()
def steer_history_rows(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                       slot_strength, scale, has_scale, lo, hi):
    """Rows [lo, hi) of the history form: row_slot / row_last_pos [R], ids [S, L] token history,
    slot_variant / slot_strength [S, K], scale [R]."""
    m = max_order - 1
    nv = blob[H_NUM_VARIANTS]
    n_slots, length = ids.shape
    ages = np.empty(max(m, 1), np.int64)
    words = np.empty(max_key_words(blob, max_order), np.int64)
    for r in range(lo, hi):
        slot = np.int64(row_slot[r])
        if slot < 0 or slot >= n_slots:
            continue
        sc = scale[r] if has_scale else scale[0]  # scale: a 1-element dummy when unused
        if not _active(slot_variant[slot], slot_strength[slot], has_scale, sc, nv):
            continue
        last = np.int64(row_last_pos[r])
        for a in range(m):
            p = last - a
            ages[a] = ids[slot, p] if 0 <= p < length else -1
        _steer_row(out, r * stride, width, blob, probe, max_order, slot_variant[slot], slot_strength[slot], has_scale,
                   sc, ages, words)


@_jit(parallel=True)
def steer_context_rows_par(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                           col0, chunks):
    """steer_context_rows over all rows, split into chunks run on numba's threads (rows are independent)."""
    rows = variant.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        steer_context_rows(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                           col0, c * step, min(rows, (c + 1) * step))


@_jit(parallel=True)
def steer_history_rows_par(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                           slot_strength, scale, has_scale, chunks):
    rows = row_slot.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        steer_history_rows(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                           slot_strength, scale, has_scale, c * step, min(rows, (c + 1) * step))


# ---- normalised entropy ----------------------------------------------------------------------------

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
    return y * _f32_from_bits(np.int32((np.int64(k) + 127) << 23))


@njit(fastmath=_SUM_FLAGS, inline="always")
def _entropy_terms(v, m):
    """exp(v - m) and exp(v - m) (v - m): 0 and 0 far below the max (-inf included); NaN for a NaN v."""
    d = v - m
    low = d < _EXP_LOW  # False for NaN, so a NaN logit reaches the sums
    dc = _EXP_LOW if low else d
    e = np.float32(0.0) if low else _exp_nonpos(dc)
    return e, e * dc


@_jit(fastmath=_SUM_FLAGS)
def _row_max(row):
    """max of row [V] (as float32), NaN ignored; _LANES running maxima so that it vectorises."""
    width = row.shape[0]
    lanes = np.full(_LANES, -np.inf, np.float32)
    t = 0
    while t + _LANES <= width:
        for j in range(_LANES):
            v = _get(row, t + j)
            lanes[j] = v if v > lanes[j] else lanes[j]
        t += _LANES
    m = np.float32(-np.inf)
    for j in range(_LANES):
        m = lanes[j] if lanes[j] > m else m
    for i in range(t, width):
        v = _get(row, i)
        m = v if v > m else m
    return m


@_jit(fastmath=_SUM_FLAGS)
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
            e, ez = _entropy_terms(_get(block, j), m)
            s += e
            sz += ez
        total += s
        weighted += sz
    s = np.float32(0.0)
    sz = np.float32(0.0)
    for j in range(full * _BLOCK, width):
        e, ez = _entropy_terms(_get(row, j), m)
        s += e
        sz += ez
    return total + s, weighted + sz


@_jit(fastmath=_SUM_FLAGS)
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


@_jit(parallel=True, fastmath=_SUM_FLAGS)
def entropy_rows_par(x, stride, width, out, chunks):
    rows = out.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        entropy_rows(x, stride, width, out, c * step, min(rows, (c + 1) * step))
