"""corpus -> counts -> style pack. Tokenises with the serving model's own tokenizer.

Streaming: documents are read (corpus_reader), tokenised in a background thread (token_stream)
and counted (counting.NgramCounter) as they come; with a memory budget the counter spills sorted
runs to disk and merges them exactly at the end. ``train_pack`` returns the pack in memory (for
callers that use it right away); ``train_to_file`` writes it straight from the merged counts
(pack_writer), holding neither the corpus nor the tables; ``count_to_shard`` writes the full
counts of part of a corpus for ``merging.merge_shards``.
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .corpus import DEFAULT_ENCODING, DEFAULT_JSONL_FIELD
from .corpus_split import BLOCK_DOCS, PartReader, check_part, part_metadata
from .counting import MAX_ORDER, NgramCounter, build_top_k_table, build_top_k_tables
from .errors import CorpusError, StylePackError
from .pack import DEFAULT_SMOOTHING_K, DEFAULT_TOP_K, StylePack, default_weights
from .table_stream import build_table_streaming
from .tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
PIPELINE_BYTES = 64 << 20  # of the budget, kept for the tokenizer's batches (token_stream: ~1 MB of text each)


@dataclass
class TrainSummary:
    documents: int
    tokens: int
    distinct_ngrams: list[int]
    stored_contexts: list[int]
    stored_entries: list[int]
    tokenize_seconds: float
    count_seconds: float
    pack_bytes: int = 0
    spills: int = 0

    def lines(self) -> list[str]:
        out = [f"documents: {self.documents:,}   tokens: {self.tokens:,}",
               f"waiting for the tokenizer: {self.tokenize_seconds:.2f} s   counting: {self.count_seconds:.2f} s "
               f"({self.tokens / max(self.count_seconds, 1e-9) / 1e6:.1f}M tokens/s)"
               + (f"   spilled to disk {self.spills}x" if self.spills else "")]
        for n, (d, c, e) in enumerate(zip(self.distinct_ngrams, self.stored_contexts, self.stored_entries), 1):
            out.append(f"order {n}: {d:,} distinct n-grams, {c:,} contexts, {e:,} stored entries")
        if self.pack_bytes:
            out.append(f"pack size: {self.pack_bytes / 1e6:.2f} MB")
        return out


def parse_memory(value) -> int | None:
    """A memory budget: bytes (int), or text such as '2G', '512M', '1.5GB', '800MiB'; None: unbounded."""
    if value is None or isinstance(value, (int, np.integer)):
        if value is not None and value < 1:
            raise StylePackError(f"memory budget must be positive, got {value}")
        return None if value is None else int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(value).upper())
    if not m or float(m.group(1)) <= 0:
        raise StylePackError(f"cannot read the memory budget {str(value)[:20]!r}; write e.g. 2G, 512M or 1.5GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def validate_train_args(orders: int, top_k: int, smoothing_k: float, weights) -> list[float]:
    if not 1 <= orders <= MAX_ORDER:
        raise StylePackError(f"orders must be between 1 and {MAX_ORDER}, got {orders}")
    if top_k < 1:
        raise StylePackError(f"top-k must be at least 1, got {top_k}")
    if not (np.isfinite(smoothing_k) and smoothing_k > 0):
        raise StylePackError(f"smoothing k must be a finite positive number, got {smoothing_k}")
    weights = default_weights(orders) if weights is None else [float(w) for w in weights]
    if len(weights) != orders or not all(np.isfinite(w) and w >= 0 for w in weights):
        raise StylePackError(f"need {orders} finite non-negative weights, got {weights}")
    return weights


def count_full(docs, vocab_size: int, orders: int, progress=None):
    """Count already tokenised documents (iterables of ids): the counter and every distinct n-gram
    of each order with its count (NgramCounter.finish)."""
    counter = NgramCounter(orders, vocab_size)
    for ids in docs:
        counter.add_document(ids)
        if progress is not None:
            progress.update(len(ids))
    if counter.tokens == 0:
        raise CorpusError("the corpus holds no tokens (empty or whitespace-only)")
    return counter, counter.finish()


def count_token_documents(docs, vocab_size: int, orders: int, top_k: int, progress=None):
    """Count already tokenised documents (iterables of ids) into top-K tables."""
    counter, counts = count_full(docs, vocab_size, orders, progress)
    tables = build_top_k_tables(counts, top_k)
    return counter, tables


def corpus_label(path: str) -> str:
    """How a corpus argument is named in pack metadata: its last path component."""
    return os.path.basename(os.path.normpath(path))


@dataclass
class CountedCorpus:
    """A corpus counted by ``count_corpus``: the counter (counts ready) and what the pack records."""
    counter: NgramCounter
    tokenizer: object
    vocab_size: int
    corpus_meta: dict
    wait_seconds: float
    count_seconds: float


def count_corpus(tokenizer_dir: str, corpus_paths: list[str], orders: int, split: str = "auto",
                 encoding: str = DEFAULT_ENCODING, jsonl_field: str = DEFAULT_JSONL_FIELD, memory=None,
                 spill_dir: str | None = None, progress: bool = True, tokenizer=None,
                 part: str = "all") -> CountedCorpus:
    """Read, tokenise and count a corpus in a pipeline, within ``memory`` (see parse_memory).
    part: 'all', or only the 'train' or 'heldout' documents (corpus_split.py).
    The caller closes ``result.counter`` (it may hold spill files)."""
    from tqdm.auto import tqdm

    from .corpus_reader import CorpusReader
    from .token_stream import tokenized_batches

    memory_bytes = parse_memory(memory)
    if memory_bytes is not None:  # the batches in flight between the tokenizer thread and the counter
        memory_bytes -= min(PIPELINE_BYTES, memory_bytes // 8)
    check_part(part)
    reader = CorpusReader(corpus_paths, split, encoding, jsonl_field)  # checks every path first
    tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_dir)
    vocab = tokenizer_vocab_size(tok)
    with tqdm(total=reader.total_bytes, desc="checking the corpus", unit="B", unit_scale=True,
              disable=not progress or len(reader.files) == 1) as bar:  # one file: checked as it is read
        if len(reader.files) > 1:
            reader.check(lambda done: bar.update(done - bar.n))
    counter = NgramCounter(orders, vocab, memory_bytes=memory_bytes, spill_dir=spill_dir)
    count = 0.0  # seconds spent counting; the rest of the pipeline's time is waiting for batches
    docs = 0
    try:
        with tqdm(total=reader.total_bytes, desc="reading, tokenising, counting", unit="B", unit_scale=True,
                  disable=not progress) as bar:
            start = time.perf_counter()
            docs_of_part = reader if part == "all" else PartReader(reader, part)
            for stream, lengths, done in tokenized_batches(docs_of_part, tok):
                t1 = time.perf_counter()
                counter.add_batch(stream, lengths)
                t2 = time.perf_counter()
                count += t2 - t1
                docs += lengths.size
                bar.update(done - bar.n)
                bar.set_postfix_str(f"{counter.tokens / max(t2 - start, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
            t1 = time.perf_counter()
            counter.finish_input()
            count += time.perf_counter() - t1
            wait = time.perf_counter() - start - count
        if docs == 0:
            what = "" if part == "all" else (f" (its {part} part; the held-out part begins at document "
                                             f"{3 * BLOCK_DOCS + 1}, see corpus_split.py)")
            raise CorpusError(f"the corpus {', '.join(corpus_paths)[:200]}{what} holds no text")
        if counter.tokens == 0:
            raise CorpusError("the corpus holds no tokens (empty or whitespace-only)")
    except BaseException:
        counter.close()
        raise
    meta = {"files": [corpus_label(p) for p in corpus_paths], "documents": counter.documents,
            "tokens": counter.tokens, "split": split, **part_metadata(part)}
    return CountedCorpus(counter, tok, vocab, meta, wait, count)


def _summary(counted: CountedCorpus, tables_or_counts, count_seconds: float) -> TrainSummary:
    distinct, contexts, entries = tables_or_counts
    return TrainSummary(counted.counter.documents, counted.counter.tokens, distinct, contexts, entries,
                        counted.wait_seconds, count_seconds, spills=counted.counter.spills)


def train_pack(tokenizer_dir: str, corpus_paths: list[str], orders: int = 3, top_k: int = DEFAULT_TOP_K,
               smoothing_k: float = DEFAULT_SMOOTHING_K, weights=None, split: str = "auto",
               name: str = "", progress: bool = True, tokenizer=None, kneser_ney: bool = False,
               memory=None, encoding: str = DEFAULT_ENCODING, jsonl_field: str = DEFAULT_JSONL_FIELD,
               spill_dir: str | None = None, part: str = "all") -> tuple[StylePack, TrainSummary]:
    """Train a pack and return it in memory (its tables are as large as the pack).

    kneser_ney: also estimate interpolated modified Kneser-Ney from the full counts and store it
    in the pack (mode "kn"; see kneser_ney.py), its orders >= 2 truncated to top_k per context;
    the full counts are then held in memory, whatever ``memory`` says. memory: budget of the
    counting (parse_memory); None counts in memory without spilling. part: which documents
    (corpus_split.py; 'all' by default)."""
    weights = validate_train_args(orders, top_k, smoothing_k, weights)
    counted = count_corpus(tokenizer_dir, corpus_paths, orders, split, encoding, jsonl_field, memory,
                           spill_dir, progress, tokenizer, part)
    counter = counted.counter
    t1 = time.perf_counter()
    backoff = None
    try:
        if kneser_ney:
            counts = counter.finish()
            tables = build_top_k_tables(counts, top_k)
            t2 = time.perf_counter()  # the summary's counting speed stays the counting speed
            from .kneser_ney import estimate_kneser_ney

            backoff = estimate_kneser_ney(counts, counted.vocab_size, top_k)
            del counts
        else:
            with ThreadPoolExecutor(max_workers=counter.threads) as pool:
                tables = [build_top_k_table(counter.unigrams(), top_k)] + list(pool.map(
                    lambda n: build_table_streaming(n, counter.blocks(n), top_k, counter.bits),
                    range(2, orders + 1)))
            t2 = time.perf_counter()
    finally:
        counter.close()
    pack = StylePack(tables, counter.unigram_counts, counted.vocab_size, tokenizer_fingerprint(counted.tokenizer),
                     smoothing_k, top_k, weights, counted.corpus_meta,
                     name or os.path.splitext(corpus_label(corpus_paths[0]))[0], backoff)
    summary = _summary(counted, ([t.distinct_ngrams for t in tables], [t.context_total.shape[0] for t in tables],
                                 [t.entry_tokens.shape[0] for t in tables]), counted.count_seconds + t2 - t1)
    return pack, summary


def train_to_file(out: str, tokenizer_dir: str, corpus_paths: list[str], orders: int = 3,
                  top_k: int = DEFAULT_TOP_K, smoothing_k: float = DEFAULT_SMOOTHING_K, weights=None,
                  split: str = "auto", name: str = "", progress: bool = True, tokenizer=None,
                  kneser_ney: bool = False, memory=None, encoding: str = DEFAULT_ENCODING,
                  jsonl_field: str = DEFAULT_JSONL_FIELD, spill_dir: str | None = None,
                  part: str = "all") -> TrainSummary:
    """Train a pack and write it to ``out``, the same bytes as save_pack(train_pack(...)), without
    holding the tables in memory (with kneser_ney: through train_pack, see there). The file
    appears only once complete; an interrupted run leaves none (and removes its spill files)."""
    from .pack import save_pack
    from .pack_writer import write_pack_streaming

    if kneser_ney:
        pack, summary = train_pack(tokenizer_dir, corpus_paths, orders, top_k, smoothing_k, weights, split, name,
                                   progress, tokenizer, True, memory, encoding, jsonl_field, spill_dir, part)
        save_pack(pack, out)
        summary.pack_bytes = os.path.getsize(out)
        return summary
    weights = validate_train_args(orders, top_k, smoothing_k, weights)
    counted = count_corpus(tokenizer_dir, corpus_paths, orders, split, encoding, jsonl_field, memory,
                           spill_dir, progress, tokenizer, part)
    counter = counted.counter
    t1 = time.perf_counter()
    try:
        pack = write_pack_streaming(out, counter.blocks, orders, counter.bits, counter.unigram_counts,
                                    counted.vocab_size, tokenizer_fingerprint(counted.tokenizer), smoothing_k,
                                    top_k, weights, counted.corpus_meta,
                                    name or os.path.splitext(corpus_label(corpus_paths[0]))[0], counter.threads,
                                    progress)
    finally:
        counter.close()
    stored = load_pack_sizes(out)
    summary = _summary(counted, ([t.distinct_ngrams for t in pack.tables], *stored),
                       counted.count_seconds + time.perf_counter() - t1)
    summary.pack_bytes = os.path.getsize(out)
    return summary


def load_pack_sizes(path: str) -> tuple[list[int], list[int]]:
    """Contexts and entries per order of a pack file, from its header (no tensor is read)."""
    from .safetensors_stream import SafetensorsReader

    shapes = SafetensorsReader(path)
    orders = sum(1 for k in shapes.tensors if k.endswith(".entry_tokens"))
    contexts = [shapes.shape(f"order{n}.context_total")[0] for n in range(1, orders + 1)]
    entries = [shapes.shape(f"order{n}.entry_tokens")[0] for n in range(1, orders + 1)]
    return contexts, entries


def count_to_shard(out: str, tokenizer_dir: str, corpus_paths: list[str], orders: int = 3, split: str = "auto",
                   progress: bool = True, tokenizer=None, memory=None, encoding: str = DEFAULT_ENCODING,
                   jsonl_field: str = DEFAULT_JSONL_FIELD, spill_dir: str | None = None,
                   part: str = "all") -> TrainSummary:
    """Count a corpus (one shard of a larger one) and write its exact full counts (shards.py);
    part: which of its documents (corpus_split.py: split by their index within this shard)."""
    from .shards import shard_metadata, write_shard

    if not 1 <= orders <= MAX_ORDER:
        raise StylePackError(f"orders must be between 1 and {MAX_ORDER}, got {orders}")
    counted = count_corpus(tokenizer_dir, corpus_paths, orders, split, encoding, jsonl_field, memory,
                           spill_dir, progress, tokenizer, part)
    counter = counted.counter
    t1 = time.perf_counter()
    try:
        meta = shard_metadata(tokenizer_fingerprint(counted.tokenizer), counted.vocab_size, orders, counted.corpus_meta)
        write_shard(out, counter.blocks, orders, counter.bits, counter.unigram_counts, meta)
    finally:
        counter.close()
    from .safetensors_stream import SafetensorsReader

    shapes = SafetensorsReader(out)
    distinct = [int(np.count_nonzero(counter.unigram_counts))] + [
        shapes.shape(f"order{n}.counts")[0] for n in range(2, orders + 1)]
    summary = _summary(counted, (distinct, [], []), counted.count_seconds + time.perf_counter() - t1)
    summary.pack_bytes = os.path.getsize(out)
    return summary
