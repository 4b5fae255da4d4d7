"""Exact n-gram counting in bounded memory, and the top-K tables a style pack stores.

Tokens arrive as documents; they are buffered into chunks, and each chunk is counted by sorting:
every n-gram is packed into one or more int64 words (most significant token first, so word order
is lexicographic token order), sorted, and run-length reduced (count_kernels). Chunk tables are
merged into sorted runs, spilled to disk under a memory budget, and merged exactly at the end
(spill.py). No n-gram crosses a document boundary.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .count_kernels import chunk_keys, merge_two, run_length, sort_keys
from .spill import DiskRun, MemoryRun, RunWriter, merge_runs, run_row_bytes

MAX_ORDER = 6


@dataclass
class OrderCounts:
    """Every distinct n-gram of one order with its count, sorted lexicographically.

    ngrams: [U, n] int32 token ids; counts: [U] int64.
    """

    order: int
    ngrams: np.ndarray
    counts: np.ndarray


def bits_per_token(vocab_size: int) -> int:
    return max(1, int(vocab_size - 1).bit_length())


def pack_keys(ngrams: np.ndarray, bits: int) -> np.ndarray:
    """Pack [M, n] token ids into [M, W] int64 words, lexicographic order preserved."""
    m, n = ngrams.shape
    per_word = 63 // bits
    words = []
    for start in range(0, n, per_word):
        part = ngrams[:, start:start + per_word].astype(np.int64)
        w = np.zeros(m, dtype=np.int64)
        for j in range(part.shape[1]):
            w = (w << bits) | part[:, j]
        words.append(w)
    return np.stack(words, axis=1)


def unpack_keys(keys: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of pack_keys: [M, W] int64 -> [M, n] int32."""
    per_word = 63 // bits
    mask = (1 << bits) - 1
    out = np.empty((keys.shape[0], n), dtype=np.int32)
    for wi, start in enumerate(range(0, n, per_word)):
        width = min(per_word, n - start)
        w = keys[:, wi]
        for j in range(width - 1, -1, -1):
            out[:, start + j] = w & mask
            w = w >> bits
    return out


class NgramCounter:
    """Counts n-grams of orders 1..max_order over a stream of documents, exactly.

    Documents are buffered into chunks of ``chunk_tokens``; each chunk's n-gram keys are sorted
    and run-length reduced per order (orders in parallel threads: the kernels release the GIL),
    and the chunk tables are merged pairwise into geometrically shrinking runs per order.

    memory_bytes (optional) bounds what this counter holds: the chunk being counted and the
    tables. When the tables would outgrow it, every order's runs are merged into one sorted run on
    disk (in a temporary folder under ``spill_dir``) and memory starts empty again; the final
    counts merge the disk runs with what is in memory (spill.merge_runs), exactly. Without a
    budget nothing is spilled and memory grows with the distinct n-grams, as any exact in-memory
    counter's must.
    """

    def __init__(self, max_order: int, vocab_size: int, chunk_tokens: int | None = None,
                 memory_bytes: int | None = None, spill_dir: str | None = None):
        if not 1 <= max_order <= MAX_ORDER:
            raise ValueError(f"orders must be between 1 and {MAX_ORDER}, got {max_order}")
        self.max_order = max_order
        self.vocab_size = vocab_size
        self.bits = bits_per_token(vocab_size)
        self.words = {n: -(-n // (63 // self.bits)) for n in range(1, max_order + 1)}  # key words per order
        self.threads = max(1, min(os.cpu_count() or 1, max_order - 1))
        self.memory_bytes = memory_bytes
        per_token = self.chunk_bytes_per_token()
        if chunk_tokens is None:  # a quarter of the budget for the chunk, the rest for the tables
            chunk_tokens = 16_000_000 if memory_bytes is None else int(min(16_000_000, max(1024, memory_bytes // 4 // per_token)))
        self.chunk_tokens = chunk_tokens
        self.chunk_bytes = chunk_tokens * per_token  # the most that counting one chunk holds at once
        self.spill_dir = spill_dir
        self.unigram_counts = np.zeros(vocab_size, dtype=np.int64)  # [V]
        self._memory: dict[int, list[MemoryRun]] = {n: [] for n in range(2, max_order + 1)}  # sizes shrinking
        self._disk: dict[int, list[DiskRun]] = {n: [] for n in range(2, max_order + 1)}
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []  # (tokens [t] int32, document lengths [d])
        self._buffered = 0
        self._folder: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards the run lists and _merging across the order threads
        self._merging = 0  # bytes of merged copies being built right now
        self.tokens = 0
        self.documents = 0
        self.spills = 0

    def chunk_bytes_per_token(self) -> int:
        """Peak bytes per buffered token while a chunk is counted: the buffered documents and their
        concatenation (4 + 4), and for each order counted at once its keys, a lexsort permutation and
        sorted copy when a key has several words, and the chunk's distinct table."""
        per_order = []
        for n in range(2, self.max_order + 1):
            w = self.words[n]
            per_order.append(8 * w + (8 + 8 * w if w > 1 else 0) + run_row_bytes(w))
        per_order.sort(reverse=True)
        return 8 + sum(per_order[:self.threads])

    @property
    def resident_bytes(self) -> int:
        """Bytes of the count tables held in memory now."""
        return sum(r.nbytes for runs in self._memory.values() for r in runs)

    def add_document(self, ids) -> None:
        ids = np.asarray(ids, dtype=np.int32)
        if ids.size == 0:
            return
        self._buffer.append((ids, np.array([ids.size], np.int64)))
        self._buffered += ids.size
        self.documents += 1
        self.tokens += ids.size
        if self._buffered >= self.chunk_tokens:
            self._flush()

    def add_batch(self, stream: np.ndarray, lengths: np.ndarray) -> None:
        """Many documents at once: stream [T] int32 is their concatenation, lengths [D] their sizes
        (empty documents are skipped, as add_document skips them)."""
        stream = np.asarray(stream, dtype=np.int32)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != stream.size:
            raise ValueError(f"document lengths sum to {int(lengths.sum())}, the stream holds {stream.size} tokens")
        offsets = np.concatenate([[0], np.cumsum(lengths)])  # [D+1]
        start = 0
        while start < lengths.size:  # cut the batch where a chunk fills up
            room = max(1, self.chunk_tokens - self._buffered)
            stop = int(np.searchsorted(offsets, offsets[start] + room, side="left"))
            stop = min(max(stop, start + 1), lengths.size)
            piece = stream[offsets[start]:offsets[stop]]
            self._buffer.append((piece, lengths[start:stop]))
            self._buffered += piece.size
            self.documents += int(np.count_nonzero(lengths[start:stop]))
            self.tokens += piece.size
            start = stop
            if self._buffered >= self.chunk_tokens:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            self._buffer = []
            return
        pieces, self._buffer, self._buffered = self._buffer, [], 0
        stream = np.concatenate([p[0] for p in pieces])  # [T] int32
        lengths = np.concatenate([p[1] for p in pieces])  # [D]
        del pieces
        if stream.min() < 0 or stream.max() >= self.vocab_size:  # checked per chunk, not per document
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        self.unigram_counts += np.bincount(stream, minlength=self.vocab_size)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [D+1]

        def count_order(n: int, stream: np.ndarray, offsets: np.ndarray) -> None:
            keys = sort_keys(chunk_keys(stream, offsets, n, self.bits))  # [M, W]
            if keys.shape[0]:
                table = MemoryRun(*run_length(keys))
                del keys
                with self._lock:
                    self._memory[n].append(table)
                self._compact(n)

        # Orders count (and merge) in parallel threads: the kernels release the GIL.
        orders = range(2, self.max_order + 1)
        list(self._pool().map(count_order, orders, [stream] * len(orders), [offsets] * len(orders)))
        del stream, offsets
        if self.memory_bytes is not None and self.resident_bytes + self.chunk_bytes > self.memory_bytes:
            self._spill()

    def _compact(self, n: int, everything: bool = False) -> None:
        """Merge the newest two runs while the older is at most twice the newer (binary-counter
        merging: each row is merged O(log) times), or all of them (``everything``), as far as the
        budget allows the merged copy (the other orders may be merging at the same time)."""
        runs = self._memory[n]
        while len(runs) > 1 and (everything or runs[-2].rows <= 2 * runs[-1].rows):
            extra = runs[-2].nbytes + runs[-1].nbytes
            with self._lock:
                if self.memory_bytes is not None and self.resident_bytes + self._merging + extra > self.memory_bytes:
                    return
                self._merging += extra
            try:
                merged = MemoryRun(*merge_two(runs[-2].keys, runs[-2].counts, runs[-1].keys, runs[-1].counts))
            finally:
                with self._lock:
                    self._merging -= extra
            with self._lock:
                runs[-2:] = [merged]

    def block_rows(self) -> int:
        """Rows per block when merging runs: small enough that every order merging at once (windows,
        merged block, table building) stays inside one chunk's share of the budget."""
        row = max(run_row_bytes(w) for w in self.words.values())
        return int(min(4_000_000, max(4096, self.chunk_bytes // (8 * self.threads * row))))

    def _spill(self) -> None:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="vllm-ngram-style-counts-", dir=self.spill_dir)
        for n in range(2, self.max_order + 1):
            if not self._memory[n]:
                continue
            writer = RunWriter(os.path.join(self._folder, f"order{n}.run{len(self._disk[n])}"), self.words[n])
            for keys, counts in merge_runs(self._memory[n], self.block_rows()):
                writer.append(keys, counts)
            self._disk[n].append(writer.close())
            self._memory[n] = []
        self.spills += 1

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.threads)
        return self._executor

    def finish_input(self) -> None:
        """Count what is still buffered, then merge each order's tables in memory into one where the
        budget allows (the counts are read twice when a pack is written); afterwards ``blocks`` and
        ``finish`` give the counts."""
        self._flush()
        list(self._pool().map(lambda n: self._compact(n, everything=True), range(2, self.max_order + 1)))

    def runs(self, n: int) -> list:
        """Every run of order n >= 2 (on disk and in memory): their merge is order n's exact counts."""
        return self._disk[n] + self._memory[n]

    def blocks(self, n: int, block_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Order n's distinct n-grams as sorted blocks of (keys [m, W] int64, counts [m] int64)."""
        return merge_runs(self.runs(n), block_rows or self.block_rows())

    def unigrams(self) -> OrderCounts:
        uni_ids = np.flatnonzero(self.unigram_counts).astype(np.int32)
        return OrderCounts(1, uni_ids[:, None], self.unigram_counts[uni_ids])

    def finish(self) -> list[OrderCounts]:
        """Counts per order, index 0 holding order 1 (as [V, 1] ids with zero counts dropped), all in
        memory (whatever the budget: this is the whole result). Spill files are removed."""
        self.finish_input()

        def final(n: int) -> OrderCounts:
            parts = list(self.blocks(n))
            if not parts:
                return OrderCounts(n, np.zeros((0, n), np.int32), np.zeros(0, np.int64))
            keys = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            counts = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            return OrderCounts(n, unpack_keys(keys, n, self.bits), np.asarray(counts, np.int64))

        try:
            return [self.unigrams()] + list(self._pool().map(final, range(2, self.max_order + 1)))
        finally:
            self.close()

    def close(self) -> None:
        """Remove the spill folder and stop the worker threads (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class OrderTable:
    """One order's top-K table: contexts, their totals, and the kept continuations.

    context_tokens: [C, n-1] int32, lexicographically sorted (n = 1: one empty context)
    context_total:  [C] int64, N_n(c): every continuation counted, kept or not
    context_offsets: [C+1] int64, entries of context i are [offsets[i], offsets[i+1])
    entry_tokens:   [E] int32, within a context by token id ascending (the top_k by count; ties: lower id)
    entry_counts:   [E] int64, C_n(c, t)
    """

    order: int
    context_tokens: np.ndarray
    context_total: np.ndarray
    context_offsets: np.ndarray
    entry_tokens: np.ndarray
    entry_counts: np.ndarray
    distinct_ngrams: int = 0


def build_top_k_table(counts: OrderCounts, top_k: int) -> OrderTable:
    """Group n-grams by context, total them, and keep each context's top_k by count (ties: lower id)."""
    n = counts.order
    grams, cnt = counts.ngrams, counts.counts
    if grams.shape[0] == 0:
        return OrderTable(n, np.zeros((0, n - 1), np.int32), np.zeros(0, np.int64), np.zeros(1, np.int64),
                          np.zeros(0, np.int32), np.zeros(0, np.int64), 0)
    ctx = grams[:, :-1]
    new_ctx = np.zeros(grams.shape[0], dtype=bool)
    new_ctx[0] = True
    for j in range(n - 1):  # column by column: no [U, n-1] temporaries
        new_ctx[1:] |= ctx[1:, j] != ctx[:-1, j]
    ctx_starts = np.flatnonzero(new_ctx)
    totals = np.add.reduceat(cnt, ctx_starts)
    sizes = np.diff(np.append(ctx_starts, grams.shape[0]))  # [C] continuations per context
    keep = np.ones(grams.shape[0], dtype=bool)
    # Only contexts with more than top_k continuations need a selection (few, but they hold many
    # rows): per context, the top_k-th largest count by partition, then ties by lowest id, which
    # comes first because rows are sorted by token within a context.
    for g in np.flatnonzero(sizes > top_k):
        lo, hi = ctx_starts[g], ctx_starts[g] + sizes[g]
        c = cnt[lo:hi]
        threshold = np.partition(c, c.size - top_k)[c.size - top_k]
        sel = c > threshold
        sel[np.flatnonzero(c == threshold)[:top_k - int(sel.sum())]] = True
        keep[lo:hi] = sel
    offsets = np.zeros(ctx_starts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.add.reduceat(keep.astype(np.int64), ctx_starts))
    return OrderTable(n, ctx[ctx_starts].astype(np.int32), totals.astype(np.int64), offsets,
                      grams[keep, -1].astype(np.int32), cnt[keep].astype(np.int64), int(grams.shape[0]))


def build_top_k_tables(counts: list[OrderCounts], top_k: int) -> list[OrderTable]:
    """build_top_k_table for every order, in parallel threads (numpy releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, len(counts)))) as pool:
        return list(pool.map(lambda c: build_top_k_table(c, top_k), counts))


def check_sparse_order(label: str, order: int, n_contexts: int, context_tokens: np.ndarray,
                       context_offsets: np.ndarray, entry_arrays: tuple, entry_tokens: np.ndarray, vocab: int) -> None:
    """Validate one order's context -> entries layout (shared by count tables and backoff tables):
    context_tokens [C, n-1], context_offsets [C+1] starting at 0 and non-decreasing, every entry
    array of length offsets[-1], token ids inside the vocabulary. Raises ValueError naming ``label``."""
    if context_tokens.shape != (n_contexts, order - 1):
        raise ValueError(f"{label}: context_tokens shape {context_tokens.shape}")
    if (context_offsets.shape != (n_contexts + 1,) or context_offsets[0] != 0
            or np.any(np.diff(context_offsets) < 0)):
        raise ValueError(f"{label}: bad context_offsets")
    e = int(context_offsets[-1])
    if any(arr.shape != (e,) for arr in (entry_tokens, *entry_arrays)):
        raise ValueError(f"{label}: entry arrays do not match offsets")
    for arr in (context_tokens, entry_tokens):
        if arr.size and (arr.min() < 0 or arr.max() >= vocab):
            raise ValueError(f"{label}: token id outside the vocabulary")

