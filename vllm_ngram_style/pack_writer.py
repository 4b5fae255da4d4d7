"""A style pack written straight from sorted counts, without holding its tables in memory.

The file is byte-identical to pack.save_pack of the same pack built in memory (same tensors,
metadata and checksum; tests/test_train_stream.py compares the bytes). Two passes over each
order's merged counts: the first sizes the order's tables (contexts, stored entries), which fixes
the file's layout; the second builds the top-K tables block by block (table_stream) and writes
each piece at its place (safetensors_stream.PresizedWriter). So the pack's bytes are written once,
never held, and the file appears under its name only once complete. Order 1 (one context, at most
V entries) is built in memory.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from .counting import OrderCounts, OrderTable, build_top_k_table
from .pack import METADATA_KEY, StylePack
from .safetensors_stream import PresizedWriter
from .table_stream import TableSizer, TopKTableBuilder

_FIELDS = ("context_tokens", "context_total", "context_offsets", "entry_tokens", "entry_counts")


class _OrderSink:
    """Appends one order's table pieces to its five tensors in the file, offsets made global."""

    def __init__(self, writer: PresizedWriter, n: int):
        self.regions = {f: writer[f"order{n}.{f}"] for f in _FIELDS}
        self.regions["context_offsets"].append(np.zeros(1, np.int64))
        self.entries = 0

    def __call__(self, ctx, totals, kept, tokens, counts) -> None:
        r = self.regions
        r["context_tokens"].append(ctx)
        r["context_total"].append(totals)
        r["context_offsets"].append(self.entries + np.cumsum(kept))
        r["entry_tokens"].append(tokens)
        r["entry_counts"].append(counts)
        self.entries += int(kept.sum())


def _placeholder(n: int, distinct: int) -> OrderTable:
    """An order with no arrays but its distinct n-gram count: all StylePack.metadata reads."""
    empty = np.zeros(0, np.int64)
    return OrderTable(n, np.zeros((0, max(n - 1, 0)), np.int32), empty, empty, np.zeros(0, np.int32), empty, distinct)


def write_pack_streaming(path: str, order_blocks: Callable[[int], Iterable], orders: int, bits: int,
                         unigram_counts: np.ndarray, vocab_size: int, fingerprint: str, smoothing_k: float,
                         top_k: int, weights: list[float], corpus: dict, name: str, threads: int = 1,
                         progress: bool = False) -> StylePack:
    """Write a pack from ``order_blocks(n)``: order n's sorted (keys, counts) blocks, n >= 2; it is
    called twice per order and must give the same blocks each time. Returns the pack without its
    arrays (metadata and sizes only; load the file for the tables). progress: tqdm bars over the
    distinct n-grams, one per pass."""
    from tqdm.auto import tqdm

    uni_ids = np.flatnonzero(unigram_counts).astype(np.int32)
    first = build_top_k_table(OrderCounts(1, uni_ids[:, None], unigram_counts[uni_ids]), top_k)

    def size(n: int) -> TableSizer:
        sizer = TableSizer(n, top_k, bits)
        for keys, counts in order_blocks(n):
            sizer.add(keys, counts)
            bar.update(keys.shape[0])
        sizer.finish()
        return sizer

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            tqdm(desc="merging the counts", unit=" n-grams", unit_scale=True, disable=not progress) as bar:
        sizes = list(pool.map(size, range(2, orders + 1)))
    specs = [("unigram_counts", np.int64, (vocab_size,))]
    specs += [(f"order1.{f}", getattr(first, f).dtype, getattr(first, f).shape) for f in _FIELDS[1:]]
    for n, s in enumerate(sizes, 2):
        specs += [(f"order{n}.context_tokens", np.int32, (s.contexts, n - 1)),
                  (f"order{n}.context_total", np.int64, (s.contexts,)),
                  (f"order{n}.context_offsets", np.int64, (s.contexts + 1,)),
                  (f"order{n}.entry_tokens", np.int32, (s.entries,)),
                  (f"order{n}.entry_counts", np.int64, (s.entries,))]
    pack = StylePack([first] + [_placeholder(n, s.distinct_ngrams) for n, s in enumerate(sizes, 2)],
                     unigram_counts, vocab_size, fingerprint, smoothing_k, top_k, weights, corpus, name)
    with PresizedWriter(path, specs, METADATA_KEY, pack.metadata()) as writer:
        writer["unigram_counts"].append(unigram_counts.astype(np.int64))
        for f in _FIELDS[1:]:
            writer[f"order1.{f}"].append(getattr(first, f))

        def build(n: int) -> int:
            builder = TopKTableBuilder(n, top_k, bits, _OrderSink(writer, n))
            for keys, counts in order_blocks(n):
                builder.add(keys, counts)
                bar.update(keys.shape[0])
            builder.finish()
            return builder.distinct_ngrams

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
                tqdm(total=sum(s.distinct_ngrams for s in sizes), desc="writing the pack", unit=" n-grams",
                     unit_scale=True, disable=not progress) as bar:
            distinct = list(pool.map(build, range(2, orders + 1)))
        if distinct != [s.distinct_ngrams for s in sizes]:
            raise RuntimeError("the counts changed between the two passes over them")
        writer.finish()  # raises if any tensor is not exactly as sized
    return pack
