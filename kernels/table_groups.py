"""The per-(variant, order) groups the flat table buffer is built from (gpu_tables.build_tables):
one variant's contexts of one order, deduplicated and sorted, with their entries; and the
duplicate-key check. Split from gpu_tables.py so that each module has one job.

Every step here releases the GIL where numpy can (lexsort, argsort, ufuncs): a live style update
builds tables in a watcher thread while the decoding thread runs, and a long GIL-holding call
(np.unique holds it through its whole sort) stalls decoding for its duration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vllm_ngram_style.contract import CompiledStyle
from vllm_ngram_style.errors import StylePackError

LAST_FLAG = 1 << 31  # the table layout's last-entry flag (re-exported by gpu_tables); token ids stay below it


def has_duplicate_rows(keys: np.ndarray) -> bool:
    """Whether two rows of keys [C, W] are equal. lexsort releases the GIL while it sorts;
    np.unique(axis=0) holds it throughout (hundreds of ms at 600k keys), stalling the decoding thread
    while a live style update builds its tables."""
    if keys.shape[0] < 2:
        return False
    s = keys[np.lexsort(keys.T[::-1])]  # [C, W] rows in lexicographic order
    return bool(np.any(np.all(s[1:] == s[:-1], axis=1)))


@dataclass
class Group:
    """Canonical contexts of one (variant, order): unique contexts with >= 1 entry, unique sorted tokens."""

    variant: int
    order: int
    ctx: np.ndarray  # [C, n-1] int64, oldest token first
    offsets: np.ndarray  # [C+1] int64
    tokens: np.ndarray  # [E] int64
    deltas: np.ndarray  # [E] float32


def canonical_group(vid: int, style: CompiledStyle, n: int) -> Group:
    o = style.orders[n - 1]
    where = f"variant {vid} ({style.name!r}, mode {style.mode!r}) order {n}"
    if o.order != n:
        raise StylePackError(f"{where}: orders[{n - 1}] holds order {o.order}")
    m = n - 1
    ctx = np.asarray(o.context_tokens, dtype=np.int64)
    offsets = np.asarray(o.offsets, dtype=np.int64)
    tokens = np.asarray(o.tokens, dtype=np.int64)
    deltas = np.asarray(o.deltas, dtype=np.float64)
    c = offsets.shape[0] - 1
    if c < 0 or ctx.size != c * m:
        raise StylePackError(f"{where}: {ctx.shape} context tokens do not match {offsets.shape[0]} offsets")
    ctx = ctx.reshape(c, m)
    e = tokens.shape[0]
    if (c and (offsets[0] != 0 or offsets[-1] != e or np.any(np.diff(offsets) < 0))) or deltas.shape != (e,):
        raise StylePackError(f"{where}: offsets / entry arrays are inconsistent")
    if e and (tokens.min() < 0 or tokens.max() >= LAST_FLAG):
        raise StylePackError(f"{where}: entry token id outside [0, 2^31)")
    if ctx.size and (ctx.min() < 0 or ctx.max() >= LAST_FLAG):
        raise StylePackError(f"{where}: context token id outside [0, 2^31)")
    if not np.all(np.isfinite(deltas)) or not np.all(np.isfinite(deltas.astype(np.float32))):
        raise StylePackError(f"{where}: a delta is not finite in float32")
    if e == 0:
        return Group(vid, n, np.zeros((0, m), np.int64), np.zeros(1, np.int64), tokens, np.zeros(0, np.float32))
    cid = np.repeat(np.arange(c, dtype=np.int64), np.diff(offsets))  # [E]
    order = np.lexsort((tokens, cid))
    cid, tokens, deltas = cid[order], tokens[order], deltas[order]
    # Duplicate (context, token) pairs add up, as the reference's accumulating index_put_ does.
    new = np.ones(e, dtype=bool)
    new[1:] = (cid[1:] != cid[:-1]) | (tokens[1:] != tokens[:-1])
    first = np.flatnonzero(new)
    deltas = np.add.reduceat(deltas, first)
    cid, tokens = cid[first], tokens[first]
    # cid is sorted: the contexts that kept entries and their entry counts, without np.unique (which
    # holds the GIL for its whole sort: a live style build would stall the decoding thread). Contexts
    # without entries contribute nothing: dropped.
    starts = np.flatnonzero(np.concatenate([[True], cid[1:] != cid[:-1]]))  # [C'] first entry per kept context
    kept = cid[starts]
    offsets = np.concatenate([starts, [cid.shape[0]]]).astype(np.int64)
    return Group(vid, n, ctx[kept], offsets, tokens, deltas.astype(np.float32))


