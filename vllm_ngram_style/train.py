"""corpus -> counts -> style pack. Tokenises with the serving model's own tokenizer."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .corpus import iter_corpus_documents
from .counting import MAX_ORDER, NgramCounter, build_top_k_tables
from .errors import CorpusError, StylePackError
from .pack import DEFAULT_SMOOTHING_K, DEFAULT_TOP_K, StylePack, default_weights
from .tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size


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

    def lines(self) -> list[str]:
        out = [f"documents: {self.documents:,}   tokens: {self.tokens:,}",
               f"tokenising: {self.tokenize_seconds:.2f} s   counting: {self.count_seconds:.2f} s "
               f"({self.tokens / max(self.count_seconds, 1e-9) / 1e6:.1f}M tokens/s)"]
        for n, (d, c, e) in enumerate(zip(self.distinct_ngrams, self.stored_contexts, self.stored_entries), 1):
            out.append(f"order {n}: {d:,} distinct n-grams, {c:,} contexts, {e:,} stored entries")
        if self.pack_bytes:
            out.append(f"pack size: {self.pack_bytes / 1e6:.2f} MB")
        return out


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


def train_pack(tokenizer_dir: str, corpus_paths: list[str], orders: int = 3, top_k: int = DEFAULT_TOP_K,
               smoothing_k: float = DEFAULT_SMOOTHING_K, weights=None, split: str = "auto",
               name: str = "", progress: bool = True, tokenizer=None,
               kneser_ney: bool = False) -> tuple[StylePack, TrainSummary]:
    """kneser_ney: also estimate interpolated modified Kneser-Ney from the full counts and store it
    in the pack (mode "kn"; see kneser_ney.py), its orders >= 2 truncated to top_k per context."""
    weights = validate_train_args(orders, top_k, smoothing_k, weights)
    docs = list(iter_corpus_documents(corpus_paths, split))
    if not docs:
        raise CorpusError(f"the corpus {', '.join(corpus_paths)} holds no text")
    tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_dir)
    vocab = tokenizer_vocab_size(tok)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    encoded: list[np.ndarray] = []
    batch = 512
    with tqdm(total=len(docs), desc="tokenising", unit="doc", disable=not progress) as bar:
        for i in range(0, len(docs), batch):
            # The Rust tokenizer parallelises a batch across cores.
            for enc in tok.backend_tokenizer.encode_batch(docs[i:i + batch], add_special_tokens=False):
                encoded.append(np.asarray(enc.ids, dtype=np.int32))
            bar.update(min(batch, len(docs) - i))
    t1 = time.perf_counter()
    total = sum(e.size for e in encoded)
    with tqdm(total=total, desc="counting", unit="tok", unit_scale=True, disable=not progress) as bar:
        counter, counts = count_full(encoded, vocab, orders, bar)
    tables = build_top_k_tables(counts, top_k)
    t2 = time.perf_counter()
    backoff = None
    if kneser_ney:  # after t2: the summary's counting speed stays the counting speed
        from .kneser_ney import estimate_kneser_ney

        backoff = estimate_kneser_ney(counts, vocab, top_k)
    del counts
    corpus_meta = {"files": [os.path.basename(p) for p in corpus_paths], "documents": counter.documents,
                   "tokens": counter.tokens, "split": split}
    pack = StylePack(tables, counter.unigram_counts, vocab, tokenizer_fingerprint(tok), smoothing_k, top_k,
                     weights, corpus_meta, name or os.path.splitext(os.path.basename(corpus_paths[0]))[0],
                     backoff)
    summary = TrainSummary(counter.documents, counter.tokens, [t.distinct_ngrams for t in tables],
                           [t.context_total.shape[0] for t in tables], [t.entry_tokens.shape[0] for t in tables],
                           t1 - t0, t2 - t1)
    return pack, summary
