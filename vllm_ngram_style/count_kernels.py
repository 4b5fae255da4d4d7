"""Numba kernels of the counter: n-gram keys of a chunk, run-length reduction, merging sorted runs.

Keys are [M, W] int64 rows, as counting.pack_keys packs them (most significant token first, so
comparing rows word by word is comparing the n-grams lexicographically). Every kernel is linear
in its input (merges are two-finger merges, not re-sorts) and releases the GIL, so the orders of a
chunk and the tokenizer thread run on separate cores. tests/test_count_kernels.py checks each one
against the numpy reference it replaces.
"""
from __future__ import annotations

from . import numba_compat  # noqa: F401  (before numba: see that module)
import numba as nb
import numpy as np

_JIT = dict(nogil=True, cache=True)




@nb.njit(**_JIT)
def _cmp(a, i, b, j) -> int:
    """-1, 0 or 1: row a[i] against row b[j], lexicographically."""
    for w in range(a.shape[1]):
        if a[i, w] < b[j, w]:
            return -1
        if a[i, w] > b[j, w]:
            return 1
    return 0


@nb.njit(**_JIT)
def _ngrams_in_documents(doc_offsets, n):
    total = 0
    for d in range(doc_offsets.shape[0] - 1):
        length = doc_offsets[d + 1] - doc_offsets[d]
        if length >= n:
            total += length - n + 1
    return total


@nb.njit(**_JIT)
def _fill_chunk_keys(stream, doc_offsets, n, bits, out):
    per_word = 63 // bits
    k = 0
    for d in range(doc_offsets.shape[0] - 1):
        for i in range(doc_offsets[d], doc_offsets[d + 1] - n + 1):
            for w in range(out.shape[1]):
                v = np.int64(0)
                for j in range(w * per_word, min(n, (w + 1) * per_word)):
                    v = (v << bits) | np.int64(stream[i + j])
                out[k, w] = v
            k += 1


@nb.njit(**_JIT)
def chunk_keys(stream, doc_offsets, n, bits):
    """Keys of every n-gram lying wholly inside one document.

    stream: [T] int32 token ids; doc_offsets: [D+1] int64, document d is stream[offsets[d]:offsets[d+1]].
    Returns [M, W] int64, W = ceil(n / (63 // bits)), in stream order (unsorted).
    """
    out = np.empty((_ngrams_in_documents(doc_offsets, n), (n + 63 // bits - 1) // (63 // bits)), np.int64)
    _fill_chunk_keys(stream, doc_offsets, n, bits, out)
    return out


# Outputs are sized for the worst case and filled in one pass; the result is a view of its first
# rows. Large arrays are fresh memory maps whose pages become resident only when written, so the
# unused tail costs address space, not memory. (numpy's allocator is not used for them: it asks for
# huge pages, and on a busy machine the kernel's compaction for them made the same merge 1-3x slower.)

@nb.njit(**_JIT)
def _fill_run_length(keys, out, counts) -> int:
    m = keys.shape[0]
    k = -1
    if keys.shape[1] == 1:
        col = keys[:, 0]
        for i in range(m):
            if i == 0 or col[i] != col[i - 1]:
                k += 1
                out[k, 0] = col[i]
                counts[k] = 0
            counts[k] += 1
        return k + 1
    for i in range(m):
        if i == 0 or _cmp(keys, i, keys, i - 1) != 0:
            k += 1
            out[k] = keys[i]
            counts[k] = 0
        counts[k] += 1
    return k + 1


@nb.njit(**_JIT)
def run_length(keys):
    """Sorted [M, W] keys -> distinct keys [U, W] and how often each occurs [U] int64."""
    out, counts = np.empty(keys.shape, np.int64), np.empty(keys.shape[0], np.int64)
    u = _fill_run_length(keys, out, counts)
    return out[:u], counts[:u]


@nb.njit(**_JIT)
def _fill_merge_one_word(a, a_counts, b, b_counts, out, counts) -> int:
    na, nb_ = a.shape[0], b.shape[0]
    i = j = k = 0
    while i < na and j < nb_:
        x, y = a[i], b[j]
        if x < y:
            out[k, 0] = x
            counts[k] = a_counts[i]
            i += 1
        elif x > y:
            out[k, 0] = y
            counts[k] = b_counts[j]
            j += 1
        else:
            out[k, 0] = x
            counts[k] = a_counts[i] + b_counts[j]
            i += 1
            j += 1
        k += 1
    out[k:k + na - i, 0] = a[i:]
    counts[k:k + na - i] = a_counts[i:]
    k += na - i
    out[k:k + nb_ - j, 0] = b[j:]
    counts[k:k + nb_ - j] = b_counts[j:]
    return k + nb_ - j


@nb.njit(**_JIT)
def _fill_merge(a_keys, a_counts, b_keys, b_counts, out, counts) -> int:
    if a_keys.shape[1] == 1:
        return _fill_merge_one_word(a_keys[:, 0], a_counts, b_keys[:, 0], b_counts, out, counts)
    na, nb_ = a_keys.shape[0], b_keys.shape[0]
    i = j = k = 0
    while i < na and j < nb_:
        c = _cmp(a_keys, i, b_keys, j)
        if c < 0:
            out[k] = a_keys[i]
            counts[k] = a_counts[i]
            i += 1
        elif c > 0:
            out[k] = b_keys[j]
            counts[k] = b_counts[j]
            j += 1
        else:
            out[k] = a_keys[i]
            counts[k] = a_counts[i] + b_counts[j]
            i += 1
            j += 1
        k += 1
    while i < na:
        out[k] = a_keys[i]
        counts[k] = a_counts[i]
        i += 1
        k += 1
    while j < nb_:
        out[k] = b_keys[j]
        counts[k] = b_counts[j]
        j += 1
        k += 1
    return k


@nb.njit(**_JIT)
def merge_two(a_keys, a_counts, b_keys, b_counts):
    """Merge two sorted runs of distinct keys, summing the counts of keys in both."""
    rows = a_keys.shape[0] + b_keys.shape[0]
    out, counts = np.empty((rows, a_keys.shape[1]), np.int64), np.empty(rows, np.int64)
    u = _fill_merge(a_keys, a_counts, b_keys, b_counts, out, counts)
    return out[:u], counts[:u]


@nb.njit(**_JIT)
def count_at_most(keys, bound):
    """How many rows of sorted [M, W] keys are <= bound [1, W] (binary search)."""
    lo, hi = 0, keys.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if _cmp(keys, mid, bound, 0) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(**_JIT)
def strictly_increasing(keys) -> bool:
    for i in range(1, keys.shape[0]):
        if _cmp(keys, i - 1, keys, i) >= 0:
            return False
    return True


def sort_keys(keys: np.ndarray) -> np.ndarray:
    """Sort [M, W] keys lexicographically (in place when W = 1: numpy's SIMD sort, no payload)."""
    if keys.shape[1] == 1:
        keys[:, 0].sort()
        return keys
    return keys[np.lexsort(keys.T[::-1])]


def merge_many(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted runs of distinct keys pairwise, smallest first (each row is copied O(log k)
    times). Measured faster than one k-way pass with a linear scan of the heads: merge_two's
    two-finger loop is branch-light and sequential."""
    runs = [r for r in runs if r[0].shape[0]] or runs[:1]
    if not runs:
        raise ValueError("merge_many needs at least one run")
    runs = sorted(runs, key=lambda r: r[0].shape[0])
    while len(runs) > 1:
        (ak, ac), (bk, bc) = runs[0], runs[1]
        merged = merge_two(ak, ac, bk, bc)
        runs = sorted([merged] + runs[2:], key=lambda r: r[0].shape[0])
    return runs[0]
