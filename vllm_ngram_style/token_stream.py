"""Documents -> token ids in a pipeline: a reader thread reads and tokenises batches of documents
(the Rust tokenizer's batch encode, on all cores, without the GIL) while the caller counts the
previous batch. Only a few batches are in flight, so memory does not grow with the corpus.
"""
from __future__ import annotations

import itertools
import queue
import threading
from typing import Iterator

import numpy as np

BATCH_CHARS = 1 << 20  # characters of text per encode call (about 250k tokens of English)
QUEUE_DEPTH = 2  # batches waiting to be counted


def encode_documents(tok, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise documents without special tokens: (their ids concatenated [T] int32, lengths [D] int64)."""
    backend = tok.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets, same ids
    ids = [e.ids for e in encode(docs, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    stream = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return stream, lengths


def _batches(docs: Iterator[str], batch_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tokenized_batches(reader, tok, batch_chars: int = BATCH_CHARS) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield (ids [T] int32, lengths [D] int64, corpus bytes read so far) for batches of the
    reader's documents (an iterable with a ``bytes_done`` attribute, e.g. CorpusReader), produced
    by a background thread. An error in the thread is raised here; leaving early stops the thread."""
    out: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in _batches(iter(reader), batch_chars):
                if not put((*encode_documents(tok, batch), reader.bytes_done)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="tokenise", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
