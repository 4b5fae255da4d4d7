"""Counting under a memory budget: sorted runs spilled to disk and merged equal in-memory counting."""
import os
from collections import Counter

import numpy as np
import pytest

from vllm_ngram_style.count_kernels import run_length, sort_keys
from vllm_ngram_style.counting import NgramCounter, bits_per_token, pack_keys
from vllm_ngram_style.spill import DiskRun, MemoryRun, RunWriter, merge_runs


def zipf_docs(rng, n_docs, vocab, max_len=60):
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    return [rng.choice(vocab, size=rng.integers(0, max_len), p=p).astype(np.int32) for _ in range(n_docs)]


def naive(docs, n):
    c = Counter()
    for d in docs:
        for i in range(len(d) - n + 1):
            c[tuple(int(x) for x in d[i:i + n])] += 1
    return c


def count(docs, orders, vocab, **kw):
    counter = NgramCounter(orders, vocab, **kw)
    for d in docs:
        counter.add_document(d)
    return counter, counter.finish()


@pytest.mark.parametrize("vocab,orders", [(30, 3), (500, 4), (70000, 6)])
@pytest.mark.parametrize("memory", [20_000, 60_000])
def test_spilled_counts_equal_in_memory_counts(vocab, orders, memory, tmp_path):
    rng = np.random.default_rng(vocab + memory)
    docs = zipf_docs(rng, 400, vocab)
    _, whole = count(docs, orders, vocab)
    spilled_counter, spilled = count(docs, orders, vocab, memory_bytes=memory, chunk_tokens=300, spill_dir=str(tmp_path))
    assert spilled_counter.spills >= 2  # the tiny budget forced spills
    for a, b in zip(whole, spilled):
        np.testing.assert_array_equal(a.ngrams, b.ngrams)
        np.testing.assert_array_equal(a.counts, b.counts)
        assert {tuple(g): int(c) for g, c in zip(b.ngrams.tolist(), b.counts)} == dict(naive(docs, b.order))
    assert os.listdir(tmp_path) == []  # finish removed the spill folder


def test_budget_derives_the_chunk_and_bounds_the_tables(tmp_path):
    rng = np.random.default_rng(0)
    docs = zipf_docs(rng, 2000, 3000)
    counter = NgramCounter(3, 3000, memory_bytes=400_000, spill_dir=str(tmp_path))
    assert counter.chunk_tokens * counter.chunk_bytes_per_token() <= 400_000 // 4 + counter.chunk_bytes_per_token()
    peak = 0
    for d in docs:
        counter.add_document(d)
        peak = max(peak, counter.resident_bytes)
    assert counter.spills > 0 and peak + counter.chunk_bytes <= 400_000
    counter.finish_input()
    assert len(os.listdir(tmp_path)) == 1  # one spill folder while the runs are needed
    counter.close()
    assert os.listdir(tmp_path) == []


def test_spill_folder_removed_when_counting_fails(tmp_path):
    counter = NgramCounter(3, 10, memory_bytes=10_000, chunk_tokens=50, spill_dir=str(tmp_path))
    with pytest.raises(ValueError, match="out of range"):
        with counter:
            for seed in range(40):
                counter.add_document(np.random.default_rng(seed).integers(0, 10, 40).astype(np.int32))
            counter.add_document([3, 10])
            counter.finish_input()
    assert counter.spills > 0 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("words_vocab", [(1, 100), (2, 70000)])
def test_merge_runs_of_memory_and_disk_runs(words_vocab, tmp_path):
    words, vocab = words_vocab
    n = 3 if words == 1 else 5
    rng = np.random.default_rng(words)
    runs, want = [], Counter()
    for r in range(6):
        grams = rng.integers(0, 9, size=(int(rng.integers(0, 400)), n)).astype(np.int32)
        keys, counts = run_length(sort_keys(pack_keys(grams, bits_per_token(vocab))))
        for k, c in zip(map(tuple, keys.tolist()), counts.tolist()):
            want[k] += c
        if r % 2:
            writer = RunWriter(str(tmp_path / f"run{r}"), keys.shape[1])
            for i in range(0, keys.shape[0], 50):
                writer.append(keys[i:i + 50], counts[i:i + 50])
            runs.append(writer.close())
        else:
            runs.append(MemoryRun(keys, counts))
    for block_rows in (1, 5, 64, 10**6):
        blocks = list(merge_runs(runs, block_rows))
        keys = np.concatenate([b[0] for b in blocks])
        counts = np.concatenate([b[1] for b in blocks])
        assert list(map(tuple, keys.tolist())) == sorted(want)  # sorted and distinct across blocks
        assert dict(zip(map(tuple, keys.tolist()), counts.tolist())) == want


def test_truncated_disk_run_is_an_error(tmp_path):
    writer = RunWriter(str(tmp_path / "r"), 1)
    writer.append(np.arange(10, dtype=np.int64)[:, None], np.ones(10, np.int64))
    run = writer.close()
    with open(run.stem + ".counts", "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(OSError, match="shorter than expected"):
        DiskRun(run.stem, 10, 1).read(0, 10)
