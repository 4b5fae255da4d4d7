"""Count shards -> one style pack (or one bigger shard), exactly.

Each order's n-grams are merged across shards block by block (spill.merge_runs), so memory stays
bounded whatever the shards' sizes; the pack is byte-identical to training on all the shards'
files at once (in the order the shards are given), because counts add up exactly and no n-gram
crosses a file.
"""
from __future__ import annotations

import os

import numpy as np

from .counting import bits_per_token
from .pack import DEFAULT_SMOOTHING_K, DEFAULT_TOP_K
from .spill import merge_runs, run_row_bytes
from .train import TrainSummary, load_pack_sizes, parse_memory, validate_train_args

_DEFAULT_BLOCK_ROWS = 1_000_000


def _block_rows(memory_bytes: int | None, orders: int, bits: int) -> int:
    """Rows per merged block such that every order merging at once stays inside the budget."""
    if memory_bytes is None:
        return _DEFAULT_BLOCK_ROWS
    row = run_row_bytes(-(-orders // (63 // bits)))
    threads = max(1, min(os.cpu_count() or 1, orders - 1))
    return int(min(4_000_000, max(4096, memory_bytes // (16 * threads * row))))


def merge_shards(shard_paths: list[str], out: str, top_k: int = DEFAULT_TOP_K,
                 smoothing_k: float = DEFAULT_SMOOTHING_K, weights=None, name: str = "", memory=None,
                 counts_only: bool = False, verify: bool = True, progress: bool = False) -> TrainSummary:
    """Merge count shards into a pack at ``out`` (counts_only: into one shard holding their sum).

    verify: check every shard's checksum first (one extra read of each)."""
    from .pack_writer import write_pack_streaming
    from .shards import Shard, check_compatible, merged_corpus, shard_metadata, write_shard

    shards = [Shard(p, verify=verify) for p in shard_paths]
    check_compatible(shards)
    first = shards[0]
    orders, vocab = first.orders, first.vocab_size
    weights = None if counts_only else validate_train_args(orders, top_k, smoothing_k, weights)
    bits = bits_per_token(vocab)
    block_rows = _block_rows(parse_memory(memory), orders, bits)
    unigrams = np.zeros(vocab, np.int64)  # [V]
    for s in shards:
        unigrams += s.unigram_counts()
    corpus = merged_corpus(shards)

    def blocks(n: int):
        return merge_runs([s.run(n) for s in shards], block_rows)

    threads = max(1, min(os.cpu_count() or 1, orders - 1))
    if counts_only:
        from .safetensors_stream import SafetensorsReader

        write_shard(out, blocks, orders, bits, unigrams, shard_metadata(first.fingerprint, vocab, orders, corpus))
        shapes = SafetensorsReader(out)
        distinct = [int(np.count_nonzero(unigrams))] + [shapes.shape(f"order{n}.counts")[0] for n in range(2, orders + 1)]
        contexts, entries = [], []
    else:
        label = name or os.path.splitext(corpus["files"][0])[0]
        pack = write_pack_streaming(out, blocks, orders, bits, unigrams, vocab, first.fingerprint,
                                    smoothing_k, top_k, weights, corpus, label, threads, progress)
        distinct = [t.distinct_ngrams for t in pack.tables]
        contexts, entries = load_pack_sizes(out)
    summary = TrainSummary(corpus["documents"], corpus["tokens"], distinct, contexts, entries, 0.0, 0.0)
    summary.pack_bytes = os.path.getsize(out)
    return summary
