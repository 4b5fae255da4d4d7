"""GPU tables for the steering kernel: every variant's n-gram priors in ONE flat int64 buffer.

A "variant" is one compiled (style, mode) table set; several are resident at once and a row picks
one by id. One buffer means the kernel takes one pointer for all tables (a short argument list is
a cheaper launch) and the layout is plain integers, so numpy builds it and any device reads it.

Layout of ``blob`` ([N] int64):
  header   [HEADER_WORDS + ORDER_FIELDS * (max_order - 1)]: see the H_* / O_* indices below.
  per order n >= 2: a static open-addressing hash table, [total_slots_n, W_n] words per slot.
  unigram  [num_variants]: start of each variant's order-1 entries (-1: none). Order 1 has a
           single (empty) context per variant, so it is a direct index, no hashing.
  entries  [E]: one int64 per (context, token): low 32 bits = token id | LAST_FLAG on the final
           entry of its context; high 32 bits = float32 bits of the delta. A context's entries are
           contiguous and sorted by token; the flag ends the slice, so no length is stored.

Hash slots. The key of a context of order n (m = n - 1 tokens) is the variant id plus the m tokens,
packed into W_n words; the word-0 low SB bits hold the context's first entry index instead of a
separate value array. Field placement (age a = 0 is the newest token, right before the predicted one):
  word 0:  bits [0, SB) start | [SB, SB+VB) variant | token of age a < K0 at SB + VB + a*TB
  word w>0: token of age a >= K0 with w = 1 + (a-K0)//KW at ((a-K0) % KW) * TB
The header carries these widths (H_TB ...), so the kernel reads them at run time.
Every word keeps bit 63 clear, so an empty slot (word 0 = -1) never equals a key. Lookups compare
the FULL key (all words, start masked off): a hash collision can never apply a wrong prior.
Slots are filled by linear probing without wrap-around (keys placed in order of their home slot),
so a key sits in [home, home + max displacement] and every slot between its home and it is
occupied: a lookup stops at the first empty slot. The table is home_range / load_factor long plus
the overflow run at its end.

The hash is 64-bit multiply/xor-shift arithmetic that wraps identically in numpy int64 and in the
kernel (see steer_kernel.py): both must stay in step; tests check the host mirror ``lookup_host``
and the kernel against the torch reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vllm_ngram_style.errors import StylePackError
from vllm_ngram_style.contract import CompiledStyle

from .table_groups import LAST_FLAG, canonical_group, has_duplicate_rows

# Golden-ratio and splitmix64 multipliers as signed int64 (wrapping arithmetic).
MULT_A = -7046029254386353131  # 0x9E3779B97F4A7C15
MULT_B = -4658895280553007687  # 0xBF58476D1CE4E5B9
# LAST_FLAG (1 << 31, defined with the groups): on an entry's token field, the final entry of its context

# Header indices.
H_NUM_ENTRIES = 0  # E
H_ENT_BASE = 1  # blob index of entries[0]
H_UNI_BASE = 2  # blob index of the unigram start array
H_NUM_VARIANTS = 3
H_TB = 4  # key layout (KeyLayout): token bits, variant bits, start bits, tokens in word 0, tokens per word
H_VB = 5
H_SB = 6
H_K0 = 7
H_KW = 8
HEADER_WORDS = 9
# Per order n >= 2, at HEADER_WORDS + ORDER_FIELDS * (n - 2):
O_SLOT_BASE = 0  # blob index of slot 0, word 0
O_HOME_RANGE = 1  # homes fall in [0, home_range); 0 = no contexts of this order
O_TOTAL_SLOTS = 2  # home_range + overflow run at the end
O_PROBE_BLOCKS = 3  # ceil((max displacement + 1) / probe): a lookup never scans further
O_WORDS = 4  # W_n, words per slot
O_SEED = 5  # hash seed of this order's table
ORDER_FIELDS = 6

DEFAULT_LOAD_FACTOR = 0.75
DEFAULT_PROBE = 16  # slots compared per vector load in the kernel


def order_header(n: int) -> int:
    """Blob index of order n's header fields (n >= 2)."""
    return HEADER_WORDS + ORDER_FIELDS * (n - 2)


@dataclass(frozen=True)
class KeyLayout:
    """Bit widths of the packed keys; compile-time constants of the kernel."""

    token_bits: int  # TB
    variant_bits: int  # VB (0 with a single variant)
    start_bits: int  # SB

    @property
    def tokens_in_word0(self) -> int:  # K0
        return (63 - self.start_bits - self.variant_bits) // self.token_bits

    @property
    def tokens_per_word(self) -> int:  # KW
        return 63 // self.token_bits

    def words(self, m: int) -> int:
        """W_n for a key of m = n - 1 tokens."""
        k0, kw = self.tokens_in_word0, self.tokens_per_word
        return 1 if m <= k0 else 1 + -(-(m - k0) // kw)

    def pack(self, variant: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """[C] variant ids and [C, m] tokens (oldest first) -> [C, W] int64 key words, start bits 0."""
        c, m = ctx.shape
        tb, k0, kw = self.token_bits, self.tokens_in_word0, self.tokens_per_word
        words = np.zeros((c, self.words(m)), dtype=np.int64)
        words[:, 0] = variant.astype(np.int64) << self.start_bits
        for age in range(m):
            tok = ctx[:, m - 1 - age].astype(np.int64)
            if age < k0:
                words[:, 0] |= tok << (self.start_bits + self.variant_bits + age * tb)
            else:
                words[:, 1 + (age - k0) // kw] |= tok << (((age - k0) % kw) * tb)
        return words


def hash_words(words: np.ndarray, seed: int) -> np.ndarray:
    """[K, W] int64 key words -> [K] int64 hashes. Mirrored exactly by the kernel."""
    h = np.full(words.shape[0], seed, dtype=np.int64)
    for w in range(words.shape[1]):
        h = (h ^ words[:, w]) * np.int64(MULT_A)
        h = h ^ (h >> 29)
    return h * np.int64(MULT_B)


def home_slot(h: np.ndarray, home_range: int) -> np.ndarray:
    """Multiply-shift range reduction of the hash's top 32 bits into [0, home_range)."""
    return (((h >> 32) & 0xFFFFFFFF) * np.int64(home_range)) >> 32


def _place(home: np.ndarray) -> np.ndarray:
    """Linear probing without wrap, keys inserted in home order: slot_i = max(home_i, slot_{i-1} + 1).

    home must be sorted. Closed form: slot_i = i + max_{j <= i}(home_j - j).
    """
    idx = np.arange(home.shape[0], dtype=np.int64)
    return np.maximum.accumulate(home - idx) + idx


@dataclass
class GpuTables:
    """The built tables: ``blob`` on the device plus the constants the kernel is compiled with."""

    blob: object  # torch.Tensor [N] int64 on the device (None when built with device=None)
    host_blob: np.ndarray  # [N] int64, the same words on the host
    max_order: int
    num_variants: int
    layout: KeyLayout
    probe: int
    num_entries: int
    contexts_per_order: list[int] = field(default_factory=list)  # index n-1; order 1 counts variants with entries
    entries_per_order: list[int] = field(default_factory=list)
    max_displacement: list[int] = field(default_factory=list)  # index n-1; 0 for order 1

    @property
    def table_bytes(self) -> int:
        return int(self.host_blob.nbytes)

    @property
    def bytes_per_entry(self) -> float:
        """All table bytes (header, hash slots, unigram index, entries) per stored (context, token) entry."""
        return self.table_bytes / max(1, self.num_entries)

    def constexprs(self) -> dict:
        """Kernel compile-time constants: loop shapes only (the key layout is read from the header), so
        one compiled kernel serves every table set with the same max order, key words and probe width."""
        lay = self.layout
        return dict(MAX_ORDER=self.max_order, CTX_BLOCK=_next_pow2(max(1, self.max_order - 1)),
                    MAXW=max([lay.words(n - 1) for n in range(2, self.max_order + 1)], default=1),
                    PROBE=self.probe)

    def summary(self) -> str:
        parts = [f"order {n}: {c:,} contexts, {e:,} entries" + (f", max probe displacement {d}" if n > 1 else "")
                 for n, (c, e, d) in enumerate(zip(self.contexts_per_order, self.entries_per_order,
                                                   self.max_displacement), 1)]
        return (f"{self.num_variants} variant(s), {self.num_entries:,} entries, {self.table_bytes / 1e6:.2f} MB, "
                f"{self.bytes_per_entry:.2f} B/entry; " + "; ".join(parts))


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def _bits(x: int) -> int:
    return max(0, int(x).bit_length())


def build_tables(variants: list[CompiledStyle], device=None, load_factor: float = DEFAULT_LOAD_FACTOR,
                 probe: int = DEFAULT_PROBE, seeds: int = 4, max_home_range: int | None = None) -> GpuTables:
    """Build the flat table buffer for ``variants`` (variant id = list index); copy it to ``device``.

    max_home_range (tests only): cap the home slots per order, so that distinct keys share homes and
    every lookup walks past colliding keys, exercising the full-key compare.
    """
    if not 0.1 <= load_factor <= 0.95:
        raise ValueError(f"load_factor must be in [0.1, 0.95], got {load_factor}")
    if probe < 1 or probe & (probe - 1):
        raise ValueError(f"probe must be a power of two, got {probe}")
    nv = len(variants)
    max_order = max([v.max_order for v in variants], default=1)
    groups = {n: [canonical_group(vid, s, n) for vid, s in enumerate(variants) if s.max_order >= n]
              for n in range(1, max_order + 1)}
    for g in groups[1]:
        if g.ctx.shape[0] > 1:
            raise StylePackError(f"variant {g.variant}: order 1 must have a single (empty) context")

    # Entries, order by order and variant by variant; remember each group's base index.
    ent_lists, bases, e_total = [], {}, 0
    for n in range(1, max_order + 1):
        for g in groups[n]:
            bases[(n, g.variant)] = e_total
            ent_lists.append(g)
            e_total += g.tokens.shape[0]
    layout = KeyLayout(
        token_bits=max(1, _bits(max([int(g.ctx.max()) for n in range(2, max_order + 1) for g in groups[n]
                                     if g.ctx.size], default=1))),
        variant_bits=_bits(max(nv - 1, 0)),
        start_bits=max(1, _bits(e_total)))
    if layout.start_bits + layout.variant_bits > 62:
        raise StylePackError(f"too many entries ({e_total:,}) and variants ({nv}) to pack into 64-bit keys")

    header = np.zeros(HEADER_WORDS + ORDER_FIELDS * (max_order - 1), dtype=np.int64)
    header[[H_NUM_VARIANTS, H_TB, H_VB, H_SB, H_K0, H_KW]] = (nv, layout.token_bits, layout.variant_bits,
                                                             layout.start_bits, layout.tokens_in_word0,
                                                             layout.tokens_per_word)
    pieces = [header]
    cursor = header.shape[0]
    ctx_counts = [sum(int(g.tokens.shape[0] > 0) for g in groups[1])]
    ent_counts = [sum(g.tokens.shape[0] for g in groups[1])]
    displacement = [0]
    for n in range(2, max_order + 1):
        m = n - 1
        gs = [g for g in groups[n] if g.ctx.shape[0]]
        hb = order_header(n)
        w_n = layout.words(m)
        header[hb + O_WORDS] = w_n
        c_total = sum(g.ctx.shape[0] for g in gs)
        ctx_counts.append(c_total)
        ent_counts.append(sum(g.tokens.shape[0] for g in gs))
        if c_total == 0:
            header[hb + O_SLOT_BASE] = cursor
            displacement.append(0)
            continue  # home range 0: the kernel never probes this order
        keys = np.concatenate([layout.pack(np.full(g.ctx.shape[0], g.variant), g.ctx) for g in gs])  # [C, W]
        starts = np.concatenate([bases[(n, g.variant)] + g.offsets[:-1] for g in gs])  # [C]
        if has_duplicate_rows(keys):
            raise StylePackError(f"order {n}: a variant lists the same context twice")
        home_range = max(1, int(np.ceil(c_total / load_factor)))
        if max_home_range is not None:
            home_range = max(1, min(home_range, int(max_home_range)))
        best = None
        for seed in range(seeds):  # keep the seed with the shortest worst-case probe run
            home = home_slot(hash_words(keys, seed), home_range)
            perm = np.argsort(home, kind="stable")
            slot = _place(home[perm])
            disp = int((slot - home[perm]).max())
            if best is None or disp < best[0]:
                best = (disp, seed, perm, slot)
            if disp < probe:
                break
        disp, seed, perm, slot = best
        total = max(home_range, int(slot[-1]) + 1)
        slots = np.full((total, w_n), -1, dtype=np.int64)
        slots[slot] = keys[perm]
        slots[slot, 0] |= starts[perm]
        header[hb + O_SLOT_BASE] = cursor
        header[hb + O_HOME_RANGE] = home_range
        header[hb + O_TOTAL_SLOTS] = total
        header[hb + O_PROBE_BLOCKS] = disp // probe + 1
        header[hb + O_SEED] = seed
        pieces.append(slots.reshape(-1))
        cursor += slots.size
        displacement.append(disp)

    uni = np.full(nv, -1, dtype=np.int64)
    for g in groups[1]:
        if g.tokens.shape[0]:
            uni[g.variant] = bases[(1, g.variant)]
    header[H_UNI_BASE] = cursor
    pieces.append(uni)
    cursor += nv

    entries = np.zeros(e_total, dtype=np.int64)
    for g in ent_lists:
        e = g.tokens.shape[0]
        if e == 0:
            continue
        b = bases[(g.order, g.variant)]
        low = g.tokens.copy()
        low[g.offsets[1:] - 1] |= LAST_FLAG
        high = g.deltas.astype(np.float32).view(np.int32).astype(np.int64)
        entries[b:b + e] = (high << 32) | low
    header[H_NUM_ENTRIES] = e_total
    header[H_ENT_BASE] = cursor
    pieces.append(entries)
    host_blob = np.concatenate(pieces)

    blob = None
    if device is not None:
        import torch

        blob = torch.from_numpy(host_blob).to(device)
    return GpuTables(blob, host_blob, max_order, nv, layout, probe, e_total, ctx_counts, ent_counts, displacement)


def lookup_host(tables: GpuTables, variant: int, context) -> list[tuple[int, int, float]]:
    """Host mirror of the kernel's lookups for one row: [(order, token, delta)] of every matched entry.

    ``context``: the row's history, oldest first (any length; -1 = missing). For tests and debugging.
    """
    blob, lay = tables.host_blob, tables.layout
    ctx = [int(t) for t in context]
    out = []

    def entries(start: int, order: int):
        base = int(blob[H_ENT_BASE])
        i = start
        while True:
            e = int(blob[base + i])
            tok = e & 0x7FFFFFFF
            delta = float(np.array([(e >> 32) & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0])
            out.append((order, tok, delta))
            if e & LAST_FLAG:
                return
            i += 1

    if not 0 <= variant < tables.num_variants:
        return out
    start = int(blob[int(blob[H_UNI_BASE]) + variant])
    if start >= 0:
        entries(start, 1)
    for n in range(2, tables.max_order + 1):
        m = n - 1
        hb = order_header(n)
        home_range = int(blob[hb + O_HOME_RANGE])
        if home_range == 0 or len(ctx) < m:
            continue
        c = ctx[len(ctx) - m:]
        if min(c) < 0 or max(c) >= (1 << lay.token_bits):
            continue
        key = lay.pack(np.array([variant]), np.array([c], dtype=np.int64))  # [1, W]
        home = int(home_slot(hash_words(key, int(blob[hb + O_SEED])), home_range)[0])
        base, total, w_n = int(blob[hb + O_SLOT_BASE]), int(blob[hb + O_TOTAL_SLOTS]), int(blob[hb + O_WORDS])
        limit = home + int(blob[hb + O_PROBE_BLOCKS]) * tables.probe
        for pos in range(home, min(total, limit)):
            words = blob[base + pos * w_n: base + (pos + 1) * w_n]
            if words[0] < 0:
                break
            if words[0] >> lay.start_bits == key[0, 0] >> lay.start_bits and np.array_equal(words[1:], key[0, 1:]):
                entries(int(words[0] & ((1 << lay.start_bits) - 1)), n)
                break
    return out
