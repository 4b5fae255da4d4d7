"""The CPU op's steering loops, compiled (numba): the contract over gpu_tables' flat buffer, one row
at a time, for both context sources. kernels/cpu_kernel.py checks inputs and calls these.

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

Logits arrive as a flat 1-D view (row r starts at r * stride) of any dtype cpu_numeric.py handles.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .cpu_numeric import add_scaled, f32_from_bits, jit, prefetch_line
from .gpu_tables import (H_ENT_BASE, H_NUM_ENTRIES, H_NUM_VARIANTS, H_TB, H_UNI_BASE, HEADER_WORDS, LAST_FLAG,
                         MULT_A, MULT_B, O_HOME_RANGE, O_PROBE_BLOCKS, O_SEED, O_SLOT_BASE, O_TOTAL_SLOTS, O_WORDS,
                         ORDER_FIELDS)


# ---- lookups and the per-row edit ------------------------------------------------------------------

@jit()
def max_key_words(blob, max_order):
    """Most 64-bit words of any order's key (the size of the key scratch array)."""
    most = 1
    for n in range(2, max_order + 1):
        most = max(most, blob[HEADER_WORDS + ORDER_FIELDS * (n - 2) + O_WORDS])
    return most


@jit()
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


@jit(inline="always")
def _active(vs, ss, j, has_scale, sc, nv):
    for k in range(vs.shape[1]):
        s = ss[j, k] * sc if has_scale else ss[j, k]
        if 0 <= vs[j, k] < nv and s != 0:
            return True
    return False


@jit(inline="always")
def _row_lists(blob, probe, max_order, vs, ss, j, has_scale, sc, ages, words, starts, scales, b):
    """One row's entry lists in accumulation order (orders ascending, within an order columns
    ascending: the reference's order): starts[b, q] the blob index of list q's first entry, scales[b, q]
    its strength; returns the count. vs / ss [J, K] variant ids / strengths, j the row's index into them,
    sc the row scale, ages [max_order-1] int64 context tokens by age. (Arrays go in whole with an index,
    never as per-row views: a view costs reference counting, atomic instructions that wait for every
    pending store, and so would stall the prefetched edit.)"""
    nv = blob[H_NUM_VARIANTS]
    tb = blob[H_TB]
    ent0 = blob[H_ENT_BASE]
    good = 0  # orders up to good + 1 have a valid context (a missing or too-wide token is in no key)
    while good < max_order - 1 and ages[good] >= 0 and (ages[good] >> tb) == 0:
        good += 1
    q = 0
    for n in range(1, good + 2):
        for k in range(vs.shape[1]):
            v = np.int64(vs[j, k])
            s = ss[j, k] * sc if has_scale else ss[j, k]
            if v < 0 or v >= nv or s == 0:
                continue
            start = blob[blob[H_UNI_BASE] + v] if n == 1 else _find(blob, probe, n, v, ages, words)
            if start >= 0:
                starts[b, q] = ent0 + start
                scales[b, q] = s
                q += 1
    return q


@jit()  # not inline="always": numba's inlining would count references to the arrays on every entry
def _walk_step(out, row0, blob, starts, stops, b, count, end, q, i):
    """One step of a walk over the lists of the row in buffer b (count lists; list q, entry blob[i]):
    prefetch the logit line the entry will write, and at a list's LAST_FLAG entry record its stop
    (one past it) and move to the next list. Returns the new (q, i); q == count: the walk is done.
    Tokens >= the logits' width are prefetched too: harmless, a prefetch never faults."""
    last = True
    if i < end:
        e = blob[i]
        prefetch_line(out, row0 + (e & 0x7FFFFFFF))
        i += 1
        last = (e & LAST_FLAG) != 0
    if last:
        stops[b, q] = min(i, end)  # a start at or past the end: an empty list
        q += 1
        if q < count:
            i = starts[b, q]
    return q, i


@jit(inline="always")
def _walk_row(out, row0, blob, starts, stops, b, count, end):
    """The whole walk of a row at once (the first row of a range: no edit to interleave it with)."""
    q, i = 0, starts[b, 0] if count > 0 else 0
    while q < count:
        q, i = _walk_step(out, row0, blob, starts, stops, b, count, end, q, i)


@jit(inline="always")
def _edit_row_walking(out, row0, width, blob, starts, stops, scales, b, count, nrow0, nb, ncount, end, checked):
    """Edit the row in buffer b (its stops recorded by its walk) while walking the next row (buffer nb,
    logits from nrow0), one walk step per entry edited: the next row's prefetches are spread over this
    row's edit, a steady stream of requests in flight instead of one burst of ~350 that the core's miss
    queues cannot hold (rows' entry counts are alike, so little of the walk is left for the tail loop;
    2-4 steps per entry measured slower: the walk's own work). The edit is a counted loop per list (no
    end-of-list test per entry). checked: the pack has tokens >= width (a vocabulary wider than the
    logits), which are skipped."""
    nq, ni = 0, starts[nb, 0] if ncount > 0 else 0
    for q in range(count):
        s = scales[b, q]
        for i in range(starts[b, q], stops[b, q]):
            e = blob[i]
            tok = e & 0x7FFFFFFF
            if not checked or tok < width:
                add_scaled(out, row0 + tok, s, f32_from_bits(np.int32(e >> 32)))
            if nq < ncount:
                nq, ni = _walk_step(out, nrow0, blob, starts, stops, nb, ncount, end, nq, ni)
    while nq < ncount:
        nq, ni = _walk_step(out, nrow0, blob, starts, stops, nb, ncount, end, nq, ni)


# ---- the two context sources, over a range of rows -------------------------------------------------
# Pipelined one row deep: a row's lists are looked up, then the previous row is edited while the new
# row's lists are walked and every logit line it will write is prefetched. A row touches ~350 cache
# lines scattered over its V logits, out of cache at large batches (a decoding step's logits were
# just written, the model's weights streamed through the caches before); one line at a time, the
# core waits on each miss. The walk also records where each list ends, so the edit needs no
# end-of-list test per entry. benchmarks/cpu_op_bench.py measures it (RESULTS.md has the tables).

@jit(inline="always")
def _scratch(max_order, variant, strength):
    """Two rows' list buffers: starts / stops [2, max_order * K] int64 (blob index of each list's first
    entry / one past its last), scales [2, max_order * K], counts, rows [2]."""
    most = max_order * variant.shape[1]
    return (np.empty((2, most), np.int64), np.empty((2, most), np.int64), np.empty((2, most), strength.dtype),
            np.zeros(2, np.int64), np.zeros(2, np.int64))


@jit(inline="always")
def _queue_row(out, stride, width, blob, probe, max_order, vs, ss, j, has_scale, sc, ages, words, scratch, r, pend,
               checked):
    """Look up row r's lists (columns vs[j] / ss[j], scale sc, context ages) into the free buffer, then
    edit the pending row (buffer pend, -1: none) while walking r's lists. Returns r's buffer: the new
    pending row."""
    starts, stops, scales, counts, rows = scratch
    end = blob[H_ENT_BASE] + blob[H_NUM_ENTRIES]
    b = 1 if pend == 0 else 0
    counts[b] = _row_lists(blob, probe, max_order, vs, ss, j, has_scale, sc, ages, words, starts, scales, b)
    rows[b] = r
    if pend < 0:
        _walk_row(out, r * stride, blob, starts, stops, b, counts[b], end)
    else:
        _edit_row_walking(out, rows[pend] * stride, width, blob, starts, stops, scales, pend, counts[pend],
                          r * stride, b, counts[b], end, checked)
    return b


@jit(inline="always")
def _finish(out, stride, width, blob, scratch, pend, checked):
    """Edit the pending row (buffer pend; -1: none): the last of a range, nothing left to walk."""
    starts, stops, scales, counts, rows = scratch
    if pend >= 0:
        _edit_row_walking(out, rows[pend] * stride, width, blob, starts, stops, scales, pend, counts[pend],
                          0, pend, 0, 0, checked)


@jit()
def steer_context_rows(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                       col0, checked, lo, hi):
    """Rows [lo, hi): variant / strength [R, K], scale [R] (read when has_scale), context [R, C] int with
    the max_order-1 context tokens in columns col0.. (oldest first); checked: see _edit_row_walking."""
    m = max_order - 1
    nv = blob[H_NUM_VARIANTS]
    ages = np.empty(max(m, 1), np.int64)  # [m] tokens by age
    words = np.empty(max_key_words(blob, max_order), np.int64)
    scratch = _scratch(max_order, variant, strength)
    pend = -1  # the buffer holding the row prefetched but not yet edited
    for r in range(lo, hi):
        sc = scale[r] if has_scale else scale[0]  # scale: a 1-element dummy when unused
        if not _active(variant, strength, r, has_scale, sc, nv):
            continue
        for a in range(m):
            ages[a] = context[r, col0 + m - 1 - a]
        pend = _queue_row(out, stride, width, blob, probe, max_order, variant, strength, r, has_scale, sc, ages,
                          words, scratch, r, pend, checked)
    _finish(out, stride, width, blob, scratch, pend, checked)


@jit()
def steer_history_rows(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                       slot_strength, scale, has_scale, checked, lo, hi):
    """Rows [lo, hi) of the history form: row_slot / row_last_pos [R], ids [S, L] token history,
    slot_variant / slot_strength [S, K], scale [R]; checked: see _edit_row_walking."""
    m = max_order - 1
    nv = blob[H_NUM_VARIANTS]
    n_slots, length = ids.shape
    ages = np.empty(max(m, 1), np.int64)
    words = np.empty(max_key_words(blob, max_order), np.int64)
    scratch = _scratch(max_order, slot_variant, slot_strength)
    pend = -1
    for r in range(lo, hi):
        slot = np.int64(row_slot[r])
        if slot < 0 or slot >= n_slots:
            continue
        sc = scale[r] if has_scale else scale[0]  # scale: a 1-element dummy when unused
        if not _active(slot_variant, slot_strength, slot, has_scale, sc, nv):
            continue
        last = np.int64(row_last_pos[r])
        for a in range(m):
            p = last - a
            ages[a] = ids[slot, p] if 0 <= p < length else -1
        pend = _queue_row(out, stride, width, blob, probe, max_order, slot_variant, slot_strength, slot, has_scale, sc,
                          ages, words, scratch, r, pend, checked)
    _finish(out, stride, width, blob, scratch, pend, checked)


@jit(parallel=True)
def steer_context_rows_par(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                           col0, checked, chunks):
    """steer_context_rows over all rows, split into chunks run on numba's threads (rows are independent)."""
    rows = variant.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        steer_context_rows(out, stride, width, blob, probe, max_order, variant, strength, scale, has_scale, context,
                           col0, checked, c * step, min(rows, (c + 1) * step))


@jit(parallel=True)
def steer_history_rows_par(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                           slot_strength, scale, has_scale, checked, chunks):
    rows = row_slot.shape[0]
    step = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        steer_history_rows(out, stride, width, blob, probe, max_order, row_slot, row_last_pos, ids, slot_variant,
                           slot_strength, scale, has_scale, checked, c * step, min(rows, (c + 1) * step))

