"""The steering kernel: z[r, t] += strength_r * scale_r * sum_n D_n(c_n(r), t), one program per row.

One launch serves every row and every variant of a step. A program reads its row's variant id and
strength (mode a: per-row arrays; mode b: per-slot arrays through row -> slot, as vLLM's model
runner v2 keeps them), gathers the row's last MAX_ORDER-1 tokens (mode a: a right-aligned [R, M]
tensor; mode b: the device token history all_token_ids[slot, last_pos - age]), then for each order
finds the context in the tables (gpu_tables.py: order 1 direct, n >= 2 hashed with full-key compare)
and adds strength x delta to the logits of the context's tokens (tokens >= V skipped). Rows with no
variant or zero effective strength are never written: they stay bit-identical. Out-of-range ids
are unsteered rather than errors (a device-side error would need a sync to report): variant ids
outside [0, num_variants), slots outside [0, S); history positions outside [0, L) are missing
tokens. Strengths are validated upstream (finite); a NaN strength would write NaN.

Contributions of different orders can hit the same token, and different threads of the program
handle them: a barrier after each order's writes orders those read-modify-writes (CUDA's
__syncthreads makes earlier global writes visible to the whole block), so the result is
deterministic without atomics. Within one context the tokens are unique (the builder merges
duplicates), so the blocks of one context never collide.

The hash arithmetic must match gpu_tables.hash_words / home_slot bit for bit (int64, wrapping).

Interpreter: when TRITON_INTERPRET=1 is set before this module is imported, ``steer_rows`` is
Triton's interpreted function and runs on CPU tensors. ``kernel_for(device)`` also hands CPU
tensors an interpreted copy when the environment variable was not set (or set too late, e.g. after
vLLM imported triton), so the CPU path never depends on import order.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Must equal gpu_tables.MULT_A / MULT_B / LAST_FLAG and the header indices (checked by the tests).
_MULT_A = tl.constexpr(-7046029254386353131)
_MULT_B = tl.constexpr(-4658895280553007687)
_LAST_FLAG = tl.constexpr(1 << 31)
_H_NUM_ENTRIES = tl.constexpr(0)
_H_ENT_BASE = tl.constexpr(1)
_H_UNI_BASE = tl.constexpr(2)
_H_NUM_VARIANTS = tl.constexpr(3)
_H_TB = tl.constexpr(4)  # then VB, SB, K0, KW at 5..8
_HEADER_WORDS = tl.constexpr(9)
_ORDER_FIELDS = tl.constexpr(6)
# Reductions go through the tl.reduce builtin with Triton's own combine functions (what tl.sum /
# tl.max / tl.min do inside): the interpreter recognises these by identity and reduces with numpy,
# even when triton.language was imported without TRITON_INTERPRET (then the stdlib wrappers
# tl.sum & co. are compiled-only functions the interpreter cannot call).
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min

# Runtime arguments, in order (every launch path passes exactly these, then the constexprs).
ARG_NAMES = ("logits_ptr", "logits_stride", "V", "blob_ptr", "sel_ptr", "str_ptr", "svar_ptr", "tok_ptr",
             "tok_stride", "tok_col0", "pos_ptr", "n_slots", "hist_len", "scale_ptr")
INT_ARGS = ("logits_stride", "V", "tok_stride", "tok_col0", "n_slots", "hist_len")
PTR_ARGS = tuple(a for a in ARG_NAMES if a.endswith("_ptr"))
CONSTEXPR_NAMES = ("FROM_HISTORY", "HAS_SCALE", "MAX_ORDER", "CTX_BLOCK", "MAXW", "PROBE", "BLOCK")


def _steer_rows(
    logits_ptr,  # [R, V] float, rows logits_stride apart, last dim contiguous; modified in place
    logits_stride, V,
    blob_ptr,  # [N] int64 tables (gpu_tables.py)
    sel_ptr,  # mode a: variant [R] int; mode b: row_slot [R] int
    str_ptr,  # mode a: strength [R] float; mode b: slot_strength [S] float
    svar_ptr,  # mode b: slot_variant [S] int; mode a: unused
    tok_ptr,  # mode a: context [R, >= M] int (right-aligned, -1 = missing); mode b: all_token_ids [S, L] int
    tok_stride,  # row stride of tok_ptr
    tok_col0,  # mode a: column of the oldest of the M context tokens; mode b: unused
    pos_ptr,  # mode b: row_last_pos [R] int (index of the newest known token); mode a: unused
    n_slots, hist_len,  # mode b: S, L
    scale_ptr,  # [R] float per-row strength multiplier (HAS_SCALE)
    FROM_HISTORY: tl.constexpr, HAS_SCALE: tl.constexpr,
    MAX_ORDER: tl.constexpr,  # highest order of any variant
    CTX_BLOCK: tl.constexpr,  # next power of two >= MAX_ORDER - 1 (context vector width)
    MAXW: tl.constexpr,  # most 64-bit words of any order's key
    PROBE: tl.constexpr,  # hash slots compared per vector load
    BLOCK: tl.constexpr,  # entries applied per vector step
):
    row = tl.program_id(0).to(tl.int64)
    num_variants = tl.load(blob_ptr + _H_NUM_VARIANTS)
    if FROM_HISTORY:
        slot = tl.load(sel_ptr + row).to(tl.int64)
        slot_ok = (slot >= 0) & (slot < n_slots)
        slot = tl.where(slot_ok, slot, 0)
        v = tl.where(slot_ok, tl.load(svar_ptr + slot).to(tl.int64), -1)
        s = tl.load(str_ptr + slot).to(tl.float32)
        last = tl.load(pos_ptr + row).to(tl.int64)
    else:
        v = tl.load(sel_ptr + row).to(tl.int64)
        s = tl.load(str_ptr + row).to(tl.float32)
    if HAS_SCALE:
        s = s * tl.load(scale_ptr + row).to(tl.float32)
    if (v >= 0) & (v < num_variants) & (s != 0.0):
        # Key layout (gpu_tables.KeyLayout): bits per token / variant / start, tokens in word 0 / per word.
        tb = tl.load(blob_ptr + _H_TB)
        vb = tl.load(blob_ptr + _H_TB + 1)
        sb = tl.load(blob_ptr + _H_TB + 2)
        k0 = tl.load(blob_ptr + _H_TB + 3)
        kw = tl.load(blob_ptr + _H_TB + 4)
        start_mask = ((tb * 0 + 1) << sb) - 1
        # The row's context, by age (0 = newest token); -1 where missing.
        ages = tl.arange(0, CTX_BLOCK)
        in_m = ages < MAX_ORDER - 1
        if FROM_HISTORY:
            p = last - ages
            p_ok = in_m & (p >= 0) & (p < hist_len)
            toks = tl.load(tok_ptr + slot * tok_stride + tl.where(p_ok, p, 0), mask=p_ok, other=-1).to(tl.int64)
        else:
            col = tl.where(in_m, tok_col0 + (MAX_ORDER - 2 - ages), 0)
            toks = tl.load(tok_ptr + row * tok_stride + col, mask=in_m, other=-1).to(tl.int64)
        # A token wider than tb bits is in no stored key (and would spill into the next field).
        tok_bad = (toks < 0) | ((toks >> tb) != 0)
        # Key field of each age: word index and bit shift (ages of word > 0 are >= k0 there).
        in_w0 = ages < k0
        past = tl.where(in_w0, 0, ages - k0)
        word = tl.where(in_w0, 0, 1 + past // kw)
        shift = tl.where(in_w0, sb + vb + ages * tb, (past % kw) * tb)
        n_ent = tl.load(blob_ptr + _H_NUM_ENTRIES)
        ent_ptr = blob_ptr + tl.load(blob_ptr + _H_ENT_BASE)
        row_ptr = logits_ptr + row * logits_stride
        lanes = tl.arange(0, PROBE)
        elanes = tl.arange(0, BLOCK)
        for n in tl.static_range(1, MAX_ORDER + 1):
            if n == 1:
                found = tl.load(blob_ptr + tl.load(blob_ptr + _H_UNI_BASE) + v)
            else:
                hb = _HEADER_WORDS + _ORDER_FIELDS * (n - 2)
                slot_base = tl.load(blob_ptr + hb)
                home_range = tl.load(blob_ptr + hb + 1)
                total = tl.load(blob_ptr + hb + 2)
                n_blocks = tl.load(blob_ptr + hb + 3)
                n_words = tl.load(blob_ptr + hb + 4)
                h = tl.load(blob_ptr + hb + 5)  # seed
                sel = ages < n - 1
                valid = tl.reduce(tl.where(sel & tok_bad, 1, 0), 0, _SUM) == 0
                # Key fields of this order (only read when valid). Disjoint bit fields: sum == or.
                parts = tl.where(sel, toks << shift, 0)
                key0 = v + (tl.reduce(tl.where(word == 0, parts, 0), 0, _SUM) >> sb)  # word 0, start bits shifted out
                for w in tl.static_range(MAXW):
                    q = tl.reduce(tl.where(word == w, parts, 0), 0, _SUM)
                    if w == 0:
                        q = q + (v << sb)
                    hw = (h ^ q) * _MULT_A
                    hw = hw ^ (hw >> 29)
                    h = tl.where(w < n_words, hw, h)
                h = h * _MULT_B
                # Top 32 hash bits (logical shift), scaled into [0, home_range).
                home = ((h.to(tl.uint64, bitcast=True) >> 32).to(tl.int64) * home_range) >> 32
                found = v * 0 - 1
                blk = v * 0
                go = valid & (home_range > 0)
                while go:
                    pos = home + blk * PROBE + lanes
                    inb = pos < total
                    w0 = tl.load(blob_ptr + slot_base + pos * n_words, mask=inb, other=-1)
                    match = inb & ((w0 >> sb) == key0)  # empty slots (-1) never match: keys are >= 0
                    for w in tl.static_range(1, MAXW):
                        q = tl.reduce(tl.where(word == w, parts, 0), 0, _SUM)
                        # Orders with fewer words skip word w. (A vector compare: the interpreter mishandles
                        # vector & scalar masks.)
                        has_w = lanes + w < lanes + n_words
                        ww = tl.load(blob_ptr + slot_base + pos * n_words + w, mask=inb & has_w, other=0)
                        match = match & ((ww == q) | ~has_w)
                    hit = tl.reduce(match.to(tl.int32), 0, _MAX)
                    found = tl.where(hit > 0, tl.reduce(tl.where(match, w0 & start_mask, 0), 0, _SUM), found)
                    ended = tl.reduce(((w0 < 0) | (pos >= total)).to(tl.int32), 0, _MAX)  # an empty slot ends the run
                    blk += 1
                    go = (hit == 0) & (ended == 0) & (blk < n_blocks)
            if found >= 0:
                off = found
                more = found >= 0
                while more:
                    idx = off + elanes
                    e = tl.load(ent_ptr + idx, mask=idx < n_ent, other=_LAST_FLAG)
                    stop = tl.reduce(tl.where(((e >> 31) & 1) != 0, elanes, BLOCK), 0, _MIN)  # lane of the context's last entry
                    tok = e & 0x7FFFFFFF
                    keep = (elanes <= stop) & (tok < V)
                    delta = (e >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                    ptrs = row_ptr + tok
                    x = tl.load(ptrs, mask=keep, other=0.0).to(tl.float32)
                    tl.store(ptrs, x + s * delta, mask=keep)
                    off += BLOCK
                    more = stop >= BLOCK
                tl.debug_barrier()  # the next order may write the same tokens from other threads


_JIT_OPTIONS = dict(do_not_specialize=list(INT_ARGS), do_not_specialize_on_alignment=list(PTR_ARGS))
# Triton's jit: a compiled kernel, or the interpreter's function when TRITON_INTERPRET=1 at import.
steer_rows = triton.jit(**_JIT_OPTIONS)(_steer_rows)
_interpreted = None


def is_interpreted(kernel) -> bool:
    return not isinstance(kernel, triton.runtime.jit.JITFunction)


def kernel_for(device) -> object:
    """The kernel object to launch for tensors on ``device`` (interpreted on CPU, whatever the env)."""
    global _interpreted
    if getattr(device, "type", str(device)) != "cpu" or is_interpreted(steer_rows):
        return steer_rows
    if _interpreted is None:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted = InterpretedFunction(_steer_rows, **_JIT_OPTIONS)
    return _interpreted
