"""The steering kernel: z[r, t] += scale_r * sum_k strength_rk * sum_n D_{variant_rk, n}(c_n(r), t).

One program per row; one launch serves every row, variant and blend column of a step. Two thin
entry points, one per context source, each argument with one meaning:

- ``steer_context``: per-row variant / strength ([R] or [R, K]) and a right-aligned context
  tensor [R, >= MAX_ORDER-1] (-1 = missing);
- ``steer_history``: vLLM Model Runner V2 state: row -> slot, per-slot variant / strength ([S] or
  [S, K]) and the token history all_token_ids [S, L] read at the row's newest position.

Both gather the row's K columns (variant, strength x row scale) and its last MAX_ORDER-1 tokens,
then call the shared, inlined body ``_steer_row``:

1. Lookup, vectorised over every (hashed order, column) pair at once: the pairs' hash chains are
   independent, so their probe loads are issued together rather than one order after another
   (the kernel is latency-bound: a row touches a few hundred entries). Order 1 is a direct index.
   Tables: gpu_tables.py (n >= 2 hashed with a full-key compare, so a collision never matches).
2. Apply, pair by pair (order-major, then column): add strength x delta to the logits of the
   context's tokens (tokens >= V skipped), with a barrier after each pair: different pairs can hit
   the same token from different threads, and CUDA's __syncthreads makes earlier global writes
   visible to the whole block, so the read-modify-writes are ordered and the result deterministic
   without atomics. Within one context the tokens are unique (the builder merges duplicates).

Rows with no active column (variant -1 or outside [0, num_variants), effective strength 0) are
never written: bit-identical. Out-of-range ids are unsteered rather than errors (a device-side
error would need a sync to report): slots outside [0, S); history positions outside [0, L) and
negative stored tokens are missing tokens. Strengths are validated upstream (finite).

The hash arithmetic must match gpu_tables.hash_words / home_slot bit for bit (int64, wrapping).

CPU: ``kernels_for(device)`` hands CPU tensors an interpreted copy of this module (interpreted.py),
whether or not TRITON_INTERPRET was set before triton was imported.
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
MAX_COLUMNS = 4  # blend columns per row (K)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


# Reductions go through the tl.reduce builtin with Triton's own combine functions (what tl.sum / tl.max
# / tl.min use inside): the interpreter recognises these by identity and reduces with numpy (see
# interpreted.py). These are private names of triton.language.standard (present in 3.6, 3.8, 3.9);
# should a release drop them, our own combine functions do the same (the interpreter then runs them
# element by element: slower, still right).
_SUM = getattr(tl.standard, "_sum_combine", _add)
_MAX = getattr(tl.standard, "_elementwise_max", _maximum)
_MIN = getattr(tl.standard, "_elementwise_min", _minimum)

# Runtime arguments of each entry point, in order (every launch path passes exactly these, then the
# constexprs CONSTEXPR_NAMES in this order).
CONTEXT_ARGS = ("logits_ptr", "logits_stride", "V", "blob_ptr",
                "var_ptr", "var_row_stride", "var_col_stride", "str_ptr", "str_row_stride", "str_col_stride",
                "ctx_ptr", "ctx_row_stride", "ctx_col0", "scale_ptr", "scale_row_stride")
HISTORY_ARGS = ("logits_ptr", "logits_stride", "V", "blob_ptr", "row_slot_ptr", "row_pos_ptr",
                "svar_ptr", "svar_row_stride", "svar_col_stride", "sstr_ptr", "sstr_row_stride", "sstr_col_stride",
                "tok_ptr", "tok_row_stride", "n_slots", "hist_len", "scale_ptr", "scale_row_stride",
                "adapt_ptr", "ent_ptr", "guard_ptr", "start_ptr", "pen_ptr")
CONSTEXPR_NAMES = ("K", "KB", "MAX_ORDER", "CTX_BLOCK", "MAXW", "PROBE", "BLOCK")
# The history entry point's extras (the per-slot state of vllm_ngram_style/steering_core.py read in the
# kernel, so a V2 step is two launches: the entropy kernel, then this one): adaptive strength, loop guard
# (n-gram sizes up to MAX_GUARD over the last WINDOW generated tokens), loop penalty.
HISTORY_CONSTEXPR_NAMES = CONSTEXPR_NAMES + ("ADAPTIVE", "GUARD", "PENALTY", "WINDOW", "WB", "MAX_GUARD")


def _jit_options(names):
    ints = [a for a in names if not a.endswith("_ptr")]
    return dict(do_not_specialize=ints, do_not_specialize_on_alignment=[a for a in names if a.endswith("_ptr")])


@triton.jit
def _sum2(x):
    """Sum of a 2D tensor to a scalar."""
    return tl.reduce(tl.reduce(x, 1, _SUM), 0, _SUM)


@triton.jit
def _steer_row(row, logits_ptr, logits_stride, V, blob_ptr,
               v,  # [KB] int64 variant of each blend column (-1: none)
               s,  # [KB] float32 effective strength of each column (strength x row scale)
               toks,  # [CTX_BLOCK] int64 the row's context by age (0 = newest), -1 where missing
               K: tl.constexpr, KB: tl.constexpr, MAX_ORDER: tl.constexpr, CTX_BLOCK: tl.constexpr,
               MAXW: tl.constexpr, PROBE: tl.constexpr, BLOCK: tl.constexpr):
    num_variants = tl.load(blob_ptr + _H_NUM_VARIANTS)
    cols = tl.arange(0, KB)
    active = (v >= 0) & (v < num_variants) & (s != 0.0)  # [KB]
    if tl.reduce(active.to(tl.int32), 0, _MAX) > 0:
        v = tl.where(active, v, 0)  # a safe index; inactive columns are masked below
        # Key layout (gpu_tables.KeyLayout): bits per token / variant / start, tokens in word 0 / per word.
        tb = tl.load(blob_ptr + _H_TB)
        vb = tl.load(blob_ptr + _H_TB + 1)
        sb = tl.load(blob_ptr + _H_TB + 2)
        k0 = tl.load(blob_ptr + _H_TB + 3)
        kw = tl.load(blob_ptr + _H_TB + 4)
        start_mask = ((tb * 0 + 1) << sb) - 1
        ages = tl.arange(0, CTX_BLOCK)  # [A]
        # A token wider than tb bits is in no stored key (and would spill into the next field).
        tok_bad = (toks < 0) | ((toks >> tb) != 0)  # [A]
        # Key field of each age: word index and bit shift (ages of word > 0 are >= k0 there).
        in_w0 = ages < k0
        past = tl.where(in_w0, 0, ages - k0)
        word = tl.where(in_w0, 0, 1 + past // kw)  # [A]
        shift = tl.where(in_w0, sb + vb + ages * tb, (past % kw) * tb)
        parts = tl.where(tok_bad, 0, toks << shift)  # [A] disjoint bit fields: sum == or

        # ---- 1. lookup of every (hashed order, column) pair: order n = o + 2 for o in [0, MAX_ORDER-1)
        ords = tl.arange(0, CTX_BLOCK)  # [O]
        ord_ok = ords < MAX_ORDER - 1
        uses = ages[None, :] <= ords[:, None]  # [O, A]: age a is in order o+2's context
        valid = ord_ok & (tl.reduce(tl.where(uses & tok_bad[None, :], 1, 0), 1, _SUM) == 0)  # [O]
        hb = _HEADER_WORDS + _ORDER_FIELDS * ords  # [O] this order's header fields
        slot_base = tl.load(blob_ptr + hb, mask=ord_ok, other=0)
        home_range = tl.load(blob_ptr + hb + 1, mask=ord_ok, other=0)
        total = tl.load(blob_ptr + hb + 2, mask=ord_ok, other=0)
        n_blocks = tl.load(blob_ptr + hb + 3, mask=ord_ok, other=0)
        n_words = tl.load(blob_ptr + hb + 4, mask=ord_ok, other=1)
        h = tl.load(blob_ptr + hb + 5, mask=ord_ok, other=0)[:, None] + v[None, :] * 0  # [O, KB] seeds
        word0 = tl.reduce(tl.where(uses & (word[None, :] == 0), parts[None, :], 0), 1, _SUM)  # [O]
        key0 = v[None, :] + (word0 >> sb)[:, None]  # [O, KB] word 0 with the start bits shifted out
        for w in tl.static_range(MAXW):
            q = tl.reduce(tl.where(uses & (word[None, :] == w), parts[None, :], 0), 1, _SUM)[:, None] + v[None, :] * 0
            if w == 0:
                q = q + (v[None, :] << sb)
            hw = (h ^ q) * _MULT_A
            hw = hw ^ (hw >> 29)
            h = tl.where((n_words > w)[:, None], hw, h)
        h = h * _MULT_B
        # Top 32 hash bits (logical shift), scaled into [0, home_range).
        home = ((h.to(tl.uint64, bitcast=True) >> 32).to(tl.int64) * home_range[:, None]) >> 32  # [O, KB]
        go = (valid & (home_range > 0))[:, None] & active[None, :]  # [O, KB] still probing
        found = tl.where(go, -1, -1).to(tl.int64)  # [O, KB] first entry of the matched context, -1 none
        lanes = tl.arange(0, PROBE)
        blk = tb * 0
        while _sum2(go.to(tl.int32)) > 0:
            pos = home[:, :, None] + blk * PROBE + lanes[None, None, :]  # [O, KB, P]
            look = go[:, :, None] & (pos < total[:, None, None])
            at = blob_ptr + slot_base[:, None, None] + pos * n_words[:, None, None]
            w0 = tl.load(at, mask=look, other=-1)
            match = look & ((w0 >> sb) == key0[:, :, None])  # empty slots (-1) never match: keys are >= 0
            for w in tl.static_range(1, MAXW):
                qw = tl.reduce(tl.where(uses & (word[None, :] == w), parts[None, :], 0), 1, _SUM)  # [O]
                has_w = look & (n_words > w)[:, None, None]  # orders with fewer words skip word w
                ww = tl.load(at + w, mask=has_w, other=0)
                match = match & ((ww == qw[:, None, None]) | ~has_w)
            hit = tl.reduce(match.to(tl.int32), 2, _MAX)  # [O, KB]
            found = tl.where(hit > 0, tl.reduce(tl.where(match, w0 & start_mask, 0), 2, _SUM), found)
            ended = tl.reduce(((w0 < 0) | (pos >= total[:, None, None])).to(tl.int32), 2, _MAX)  # an empty slot ends it
            blk += 1
            go = go & (hit == 0) & (ended == 0) & (blk < n_blocks[:, None])
        uni = tl.load(blob_ptr + tl.load(blob_ptr + _H_UNI_BASE) + v, mask=active, other=-1)  # [KB] order 1

        # ---- 2. apply, pair by pair
        n_ent = tl.load(blob_ptr + _H_NUM_ENTRIES)
        ent_ptr = blob_ptr + tl.load(blob_ptr + _H_ENT_BASE)
        row_ptr = logits_ptr + row * logits_stride
        elanes = tl.arange(0, BLOCK)
        for n in tl.static_range(1, MAX_ORDER + 1):
            for k in tl.static_range(K):
                sel = cols == k
                s_k = tl.reduce(tl.where(sel, s, 0.0), 0, _SUM)
                if n == 1:
                    start = tl.reduce(tl.where(sel, uni, 0), 0, _SUM)
                else:
                    start = _sum2(tl.where((ords == n - 2)[:, None] & sel[None, :], found, 0))
                if start >= 0:
                    off = start
                    more = start >= 0
                    while more:
                        idx = off + elanes
                        e = tl.load(ent_ptr + idx, mask=idx < n_ent, other=_LAST_FLAG)
                        stop = tl.reduce(tl.where(((e >> 31) & 1) != 0, elanes, BLOCK), 0, _MIN)  # the context's last entry
                        tok = e & 0x7FFFFFFF
                        keep = (elanes <= stop) & (tok < V)
                        delta = (e >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                        ptrs = row_ptr + tok
                        x = tl.load(ptrs, mask=keep, other=0.0).to(tl.float32)
                        tl.store(ptrs, x + s_k * delta, mask=keep)
                        off += BLOCK
                        more = stop >= BLOCK
                    tl.debug_barrier()  # the next pair may write the same tokens from other threads


@triton.jit(**_jit_options(CONTEXT_ARGS))
def steer_context(logits_ptr,  # [R, V] float, rows logits_stride apart, last dim contiguous; edited in place
                  logits_stride, V,
                  blob_ptr,  # [N] int64 tables (gpu_tables.py)
                  var_ptr, var_row_stride, var_col_stride,  # variant [R] or [R, K] int (-1: none)
                  str_ptr, str_row_stride, str_col_stride,  # strength, the same shape, float
                  ctx_ptr, ctx_row_stride,  # context [R, >= MAX_ORDER-1] int, right-aligned, -1 = missing
                  ctx_col0,  # column of the oldest of the MAX_ORDER-1 tokens the kernel reads
                  scale_ptr, scale_row_stride,  # row_scale [R] float (stride 1), or a [1] tensor of ones (stride 0)
                  K: tl.constexpr,  # blend columns (1 for [R])
                  KB: tl.constexpr,  # next power of two >= K
                  MAX_ORDER: tl.constexpr,  # highest order of any variant
                  CTX_BLOCK: tl.constexpr,  # next power of two >= MAX_ORDER - 1
                  MAXW: tl.constexpr,  # most 64-bit words of any order's key
                  PROBE: tl.constexpr,  # hash slots compared per vector load
                  BLOCK: tl.constexpr):  # entries applied per vector step
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, KB)
    in_k = cols < K
    v = tl.load(var_ptr + row * var_row_stride + cols * var_col_stride, mask=in_k, other=-1).to(tl.int64)
    s = tl.load(str_ptr + row * str_row_stride + cols * str_col_stride, mask=in_k, other=0.0).to(tl.float32)
    s = s * tl.load(scale_ptr + row * scale_row_stride).to(tl.float32)
    ages = tl.arange(0, CTX_BLOCK)
    in_m = ages < MAX_ORDER - 1
    col = tl.where(in_m, ctx_col0 + (MAX_ORDER - 2 - ages), 0)
    toks = tl.load(ctx_ptr + row * ctx_row_stride + col, mask=in_m, other=-1).to(tl.int64)
    _steer_row(row, logits_ptr, logits_stride, V, blob_ptr, v, s, toks, K, KB, MAX_ORDER, CTX_BLOCK, MAXW, PROBE, BLOCK)


@triton.jit
def _history_token(tok_ptr, row_off, p, lo, hist_len, on):
    """all_token_ids[slot, p] where lo <= p < hist_len and ``on`` (and the stored token >= 0), else -1."""
    ok = on & (p >= lo) & (p < hist_len)
    t = tl.load(tok_ptr + row_off + tl.where(ok, p, 0), mask=ok, other=-1).to(tl.int64)
    return tl.where(t >= 0, t, -1)


@triton.jit
def _guard_capture(row_ptr, V, tok_ptr, row_off, hist_len, last, first, g,
                   WINDOW: tl.constexpr, WB: tl.constexpr, MAX_GUARD: tl.constexpr):
    """The loop guard's banned tokens of one row and their logits before steering (loop_guard.py's rule):
    over the row's last WINDOW generated tokens h (positions >= first), every window h[j .. j+g-1] whose
    first g-1 tokens equal the newest g-1 bans its last token. The window is read once (one 4*WINDOW-byte
    read of the history per row: it may live in host memory, across PCIe) and shifted in registers.
    Returns (banned [WB] int64, whether each lane bans [WB], logits of the banned tokens [WB])."""
    j = tl.arange(0, WB)  # window start, as an index into h (h[WINDOW-1] is the newest token)
    gv = j * 0 + g  # g as a vector (vector compares only: see the probe loop's note)
    h = _history_token(tok_ptr, row_off, last - (WINDOW - 1) + j, tl.maximum(first, 0), hist_len,
                       (gv >= 2) & (j < WINDOW))  # [WB]
    match = (gv >= 2) & (j <= WINDOW - gv)
    for d in tl.static_range(MAX_GUARD - 1):
        use = j * 0 + d < gv - 1
        hj = tl.gather(h, tl.minimum(j + d, WB - 1), 0)  # h[j + d]
        sd = tl.gather(h, tl.minimum(tl.maximum(WINDOW - gv + 1 + d, 0), WB - 1), 0)  # suffix token d, every lane
        match = match & (~use | ((hj == sd) & (hj >= 0)))
    banned = tl.gather(h, tl.minimum(tl.maximum(j + gv - 1, 0), WB - 1), 0)  # h[j + g - 1]
    match = match & (banned >= 0) & (banned < V)
    before = tl.load(row_ptr + tl.where(match, banned, 0), mask=match, other=0.0)
    return banned, match, before


@triton.jit(**_jit_options(HISTORY_ARGS))
def steer_history(logits_ptr,  # [R, V] float, rows logits_stride apart, last dim contiguous; edited in place
                  logits_stride, V,
                  blob_ptr,  # [N] int64 tables (gpu_tables.py)
                  row_slot_ptr,  # [R] int: the row's request slot (outside [0, S): unsteered)
                  row_pos_ptr,  # [R] int: index in all_token_ids[slot] of the row's newest known token
                  svar_ptr, svar_row_stride, svar_col_stride,  # slot_variant [S] or [S, K] int (-1: none)
                  sstr_ptr, sstr_row_stride, sstr_col_stride,  # slot_strength, the same shape, float
                  tok_ptr, tok_row_stride,  # all_token_ids [S, L] int, rows contiguous
                  n_slots, hist_len,  # S, L
                  scale_ptr, scale_row_stride,  # row_scale [R] float (stride 1), or a [1] tensor of ones (stride 0)
                  adapt_ptr,  # ADAPTIVE: slot_adaptive [S] int (1: scale the row by ent_ptr[row])
                  ent_ptr,  # ADAPTIVE: [R] float32 normalised entropy of each row's logits before the edit
                  guard_ptr,  # GUARD: slot_guard [S] int, the loop guard's n-gram size (0: off)
                  start_ptr,  # GUARD: prompt_len [S] int, the first generated position of each slot
                  pen_ptr,  # PENALTY: slot_guard_penalty [S] float, nats below the unsteered logit
                  K: tl.constexpr, KB: tl.constexpr, MAX_ORDER: tl.constexpr, CTX_BLOCK: tl.constexpr,
                  MAXW: tl.constexpr, PROBE: tl.constexpr, BLOCK: tl.constexpr,
                  ADAPTIVE: tl.constexpr, GUARD: tl.constexpr, PENALTY: tl.constexpr,
                  WINDOW: tl.constexpr,  # generated tokens the loop guard looks at
                  WB: tl.constexpr,  # next power of two >= WINDOW
                  MAX_GUARD: tl.constexpr):  # largest n-gram size the guard accepts
    # (unused pointers are the op's [1] placeholder tensor: each argument keeps its one meaning)
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(row_slot_ptr + row).to(tl.int64)
    slot_ok = (slot >= 0) & (slot < n_slots)
    slot = tl.where(slot_ok, slot, 0)
    cols = tl.arange(0, KB)
    k_ok = cols < tl.where(slot_ok, K, 0)  # every column missing for a bad slot (vector compare: no loads at all)
    v = tl.load(svar_ptr + slot * svar_row_stride + cols * svar_col_stride, mask=k_ok, other=-1).to(tl.int64)
    s = tl.load(sstr_ptr + slot * sstr_row_stride + cols * sstr_col_stride, mask=k_ok, other=0.0).to(tl.float32)
    s = s * tl.load(scale_ptr + row * scale_row_stride).to(tl.float32)
    if ADAPTIVE:  # the core's row_scale = adaptive ? entropy : 1, read here instead of gathered in torch
        adaptive = tl.load(adapt_ptr + slot, mask=slot_ok, other=0) != 0
        s = s * tl.where(adaptive, tl.load(ent_ptr + row).to(tl.float32), 1.0)
    last = tl.load(row_pos_ptr + row).to(tl.int64)
    hl = tl.where(slot_ok, hist_len, 0)  # no history at all for a bad slot
    ages = tl.arange(0, CTX_BLOCK)
    p = last - ages
    p_ok = (ages < MAX_ORDER - 1) & (p >= 0) & (p < hl)
    toks = tl.load(tok_ptr + slot * tok_row_stride + tl.where(p_ok, p, 0), mask=p_ok, other=-1).to(tl.int64)
    if GUARD:  # capture the banned tokens' logits before any write of this row
        g = tl.load(guard_ptr + slot, mask=slot_ok, other=0).to(tl.int32)
        first = tl.load(start_ptr + slot, mask=slot_ok, other=0).to(tl.int64)
        row_ptr = logits_ptr + row * logits_stride
        banned, bans, before = _guard_capture(row_ptr, V, tok_ptr, slot * tok_row_stride, hl, last, first, g,
                                              WINDOW, WB, MAX_GUARD)
        tl.debug_barrier()  # every capture load is done before the edit writes
    _steer_row(row, logits_ptr, logits_stride, V, blob_ptr, v, s, toks, K, KB, MAX_ORDER, CTX_BLOCK, MAXW, PROBE, BLOCK)
    if GUARD:  # banned tokens get their unsteered logit back (minus the penalty): loop_guard.restore_banned
        tl.debug_barrier()  # after every write of the edit
        if PENALTY:
            before = before - tl.load(pen_ptr + slot, mask=slot_ok, other=0.0).to(before.dtype)
        tl.store(row_ptr + tl.where(bans, banned, 0), before, mask=bans)  # duplicates store one same value


ENTRY_POINTS = {"context": ("steer_context", CONTEXT_ARGS, CONSTEXPR_NAMES),
                "history": ("steer_history", HISTORY_ARGS, HISTORY_CONSTEXPR_NAMES)}


def kernels_for(device):
    """{"context": kernel, "history": kernel} to launch for tensors on ``device`` (interpreted on CPU)."""
    import sys

    from .interpreted import interpreted_copy, is_interpreted

    mod = sys.modules[__name__]
    if getattr(device, "type", str(device)) == "cpu" and not is_interpreted(steer_context):
        mod = interpreted_copy(mod)
    return {kind: getattr(mod, name) for kind, (name, _, _) in ENTRY_POINTS.items()}
