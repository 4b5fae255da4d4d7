"""Sorted runs of (n-gram key, count) in memory or on disk, and their exact streaming merge.

A run is a sequence of distinct keys ([rows, W] int64, ascending) with their counts ([rows]
int64). Runs spilled to disk are two raw little-endian files (keys, counts) in a temporary
folder; they are read back with plain reads, not memory maps, so reading a run of any size adds
only the block being read to the process's resident memory.

``merge_runs`` merges any number of runs block by block: each source contributes a window of
rows; every row not greater than the smallest last key among the windows that do not reach their
run's end is final (no later row of any run can equal it), so those rows are merged (counts of
equal keys summed) and yielded. Output blocks are therefore sorted, distinct across blocks, and
exact: the totals per key are the same as counting everything in one table.
"""
from __future__ import annotations

import os
from typing import Iterator, Protocol

import numpy as np

from .count_kernels import count_at_most, merge_many

KEY_BYTES = 8  # int64 words
COUNT_BYTES = 8  # int64 counts


def run_row_bytes(words: int) -> int:
    """Bytes one distinct n-gram takes in a run: its key words and its count."""
    return words * KEY_BYTES + COUNT_BYTES


class Run(Protocol):
    rows: int
    words: int

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop): keys [m, W] int64 and counts [m] int64."""


class MemoryRun:
    """A run held in memory (a table of distinct keys being counted)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray):
        self.keys = keys  # [U, W] int64, strictly ascending
        self.counts = counts  # [U] int64
        self.rows, self.words = keys.shape

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.counts.nbytes

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[start:stop], self.counts[start:stop]


class DiskRun:
    """A run spilled to two raw files, <stem>.keys ([rows, W] int64) and <stem>.counts ([rows] int64)."""

    def __init__(self, stem: str, rows: int, words: int):
        self.stem, self.rows, self.words = stem, rows, words

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(stop, self.rows)
        m = max(0, stop - start)
        keys = np.fromfile(self.stem + ".keys", dtype="<i8", count=m * self.words,
                           offset=start * self.words * KEY_BYTES).reshape(m, self.words)
        counts = np.fromfile(self.stem + ".counts", dtype="<i8", count=m, offset=start * COUNT_BYTES)
        if counts.shape[0] != m or keys.shape[0] != m:
            raise OSError(f"spill file {self.stem!r} is shorter than expected (was the temporary folder cleaned?)")
        return keys, counts

    def delete(self) -> None:
        for suffix in (".keys", ".counts"):
            try:
                os.remove(self.stem + suffix)
            except FileNotFoundError:
                pass


class RunWriter:
    """Appends sorted blocks to a new DiskRun."""

    def __init__(self, stem: str, words: int):
        self.stem, self.words, self.rows = stem, words, 0
        self._keys = open(stem + ".keys", "wb")
        self._counts = open(stem + ".counts", "wb")

    def append(self, keys: np.ndarray, counts: np.ndarray) -> None:
        np.ascontiguousarray(keys, dtype="<i8").tofile(self._keys)
        np.ascontiguousarray(counts, dtype="<i8").tofile(self._counts)
        self.rows += keys.shape[0]

    def close(self) -> DiskRun:
        self._keys.close()
        self._counts.close()
        return DiskRun(self.stem, self.rows, self.words)


def merge_runs(runs: list, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the exact merge of sorted runs as sorted blocks (keys [m, W], counts [m]).

    Memory: about ``block_rows`` rows of windows plus the merged block (at most as many rows).
    """
    runs = [r for r in runs if r.rows > 0]
    if not runs:
        return
    if len(runs) == 1:  # nothing to merge: stream the run as it is
        for start in range(0, runs[0].rows, block_rows):
            yield runs[0].read(start, start + block_rows)
        return
    window = max(1, block_rows // len(runs))
    cursor = [0] * len(runs)
    while True:
        live = [i for i, r in enumerate(runs) if cursor[i] < r.rows]
        if not live:
            return
        windows = {i: runs[i].read(cursor[i], cursor[i] + window) for i in live}
        # The smallest last key among windows that stop before their run ends bounds what is final.
        bound = None
        for i in live:
            if cursor[i] + windows[i][0].shape[0] < runs[i].rows:
                last = windows[i][0][-1:]
                if bound is None or tuple(last[0]) < tuple(bound[0]):
                    bound = last
        parts = []
        for i in live:
            keys, counts = windows[i]
            take = keys.shape[0] if bound is None else count_at_most(keys, bound)
            if take:
                parts.append((keys[:take], counts[:take]))
                cursor[i] += take
        yield merge_many(parts)
