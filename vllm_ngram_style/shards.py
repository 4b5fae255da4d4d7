"""Count shards: the exact full counts of part of a corpus, in one safetensors file.

Counting can run as independent tasks (one per group of files) anywhere; ``merge`` adds the
shards' counts exactly, so a pack merged from shards is bit-identical to one trained on all the
files at once. Layout, for each order n in 2..orders:
  order{n}.ngrams [U_n, n] int32   every distinct n-gram, lexicographically sorted
  order{n}.counts [U_n] int64      its count
  unigram_counts  [V] int64
Metadata (the header's "ngram_style_counts" key) is JSON: format name and version, tokenizer
fingerprint and vocabulary size, orders, corpus (files, documents, tokens, split; part and its
scheme when not the whole corpus, see corpus_split.py) and a checksum
computed as a pack's is.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .corpus_split import pack_part, part_metadata
from .count_kernels import strictly_increasing
from .counting import bits_per_token, pack_keys, unpack_keys
from .errors import StylePackError
from .safetensors_stream import PresizedWriter, SafetensorsReader

FORMAT_NAME = "vllm-ngram-style-counts"
FORMAT_VERSION = 1
METADATA_KEY = "ngram_style_counts"


def shard_metadata(fingerprint: str, vocab_size: int, orders: int, corpus: dict) -> dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "tokenizer": {"fingerprint": fingerprint, "vocab_size": vocab_size},
            "orders": orders, "corpus": corpus}


def write_shard(path: str, order_blocks, orders: int, bits: int, unigram_counts: np.ndarray, meta: dict) -> None:
    """Write a shard from ``order_blocks(n)`` (order n's sorted (keys, counts) blocks; called twice
    per order: once to size the file, once to fill it), atomically."""
    rows = {n: sum(k.shape[0] for k, _ in order_blocks(n)) for n in range(2, orders + 1)}
    specs = [("unigram_counts", np.int64, (unigram_counts.shape[0],))]
    for n in range(2, orders + 1):
        specs += [(f"order{n}.ngrams", np.int32, (rows[n], n)), (f"order{n}.counts", np.int64, (rows[n],))]
    meta = {k: v for k, v in meta.items() if k != "checksum"}
    with PresizedWriter(path, specs, METADATA_KEY, meta) as writer:
        writer["unigram_counts"].append(unigram_counts.astype(np.int64))
        for n in range(2, orders + 1):
            for keys, counts in order_blocks(n):
                writer[f"order{n}.ngrams"].append(unpack_keys(keys, n, bits))
                writer[f"order{n}.counts"].append(np.asarray(counts, np.int64))
        writer.finish()


class ShardOrderRun:
    """One order of a shard as a sorted run (spill.Run): n-grams read in row ranges, packed into keys,
    and checked to be sorted, distinct and inside the vocabulary as they are read."""

    def __init__(self, shard: "Shard", n: int):
        self.shard, self.n = shard, n
        self.rows = shard.reader.shape(f"order{n}.ngrams")[0]
        self.bits = bits_per_token(shard.vocab_size)
        self.words = -(-n // (63 // self.bits))

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        r, p = self.shard.reader, f"order{self.n}."
        lo = max(start - 1, 0)  # one row before, to check the order across reads
        grams = r.read_rows(p + "ngrams", lo, stop)
        counts = r.read_rows(p + "counts", start, stop)
        if grams.size and (grams.min() < 0 or grams.max() >= self.shard.vocab_size):
            raise self.shard.error(f"order {self.n} holds a token id outside the vocabulary")
        keys = pack_keys(grams, self.bits)
        if not strictly_increasing(keys) or (counts.size and counts.min() < 1):
            raise self.shard.error(f"order {self.n} is not sorted, has repeated n-grams or non-positive counts")
        return keys[start - lo:], counts


class Shard:
    """An opened, validated count shard."""

    def __init__(self, path: str, verify: bool = True):
        self.path = path
        if not os.path.isfile(path):
            raise StylePackError(f"count shard not found: {path!r}")
        try:
            self.reader = SafetensorsReader(path)
        except (ValueError, OSError) as exc:
            raise self.error(f"not a readable safetensors file ({exc})") from exc
        try:
            meta = json.loads(self.reader.metadata[METADATA_KEY])
        except (KeyError, json.JSONDecodeError) as exc:
            raise self.error("not a count shard (no ngram_style_counts metadata)") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise self.error("not a count shard (wrong format name)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise self.error(f"format version {meta.get('format_version')!r} is not supported (this build reads {FORMAT_VERSION})")
        stored = meta.pop("checksum", None)
        if verify and stored != self.reader.checksum(meta):
            raise self.error("checksum mismatch: the file is corrupt or was modified")
        try:
            self.orders = int(meta["orders"])
            self.vocab_size = int(meta["tokenizer"]["vocab_size"])
            self.fingerprint = str(meta["tokenizer"]["fingerprint"])
            self.corpus = dict(meta["corpus"])
            if self.reader.shape("unigram_counts") != (self.vocab_size,):
                raise ValueError("unigram_counts has the wrong shape")
            for n in range(2, self.orders + 1):
                rows = self.reader.shape(f"order{n}.ngrams")
                if rows[1:] != (n,) or self.reader.shape(f"order{n}.counts") != rows[:1]:
                    raise ValueError(f"order {n} tensors have inconsistent shapes")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise self.error(f"inconsistent contents ({exc})") from exc
        self.meta = meta

    def error(self, why: str) -> StylePackError:
        return StylePackError(f"count shard {self.path!r}: {why}")

    def unigram_counts(self) -> np.ndarray:
        return self.reader.read("unigram_counts").astype(np.int64)

    def run(self, n: int) -> ShardOrderRun:
        return ShardOrderRun(self, n)


def check_compatible(shards: list[Shard]) -> None:
    """Shards merge only when counted with the same tokenizer, orders, document split and part
    (a train shard merged with a held-out one would leak held-out text into a steering pack)."""
    if not shards:
        raise StylePackError("no count shard given")
    first = shards[0]
    for s in shards[1:]:
        for what, a, b in (("tokenizer", first.fingerprint, s.fingerprint), ("vocabulary size", first.vocab_size, s.vocab_size),
                           ("orders", first.orders, s.orders), ("split", first.corpus.get("split"), s.corpus.get("split")),
                           ("part", pack_part(first.corpus), pack_part(s.corpus))):
            if a != b:
                raise StylePackError(f"count shards {first.path!r} and {s.path!r} differ in {what} "
                                     f"({str(a)[:16]} vs {str(b)[:16]}); count every shard with the same settings")


def merged_corpus(shards: list[Shard]) -> dict:
    """The corpus metadata of training on every shard's files, in the shards' order."""
    return {"files": [f for s in shards for f in s.corpus["files"]],
            "documents": sum(int(s.corpus["documents"]) for s in shards),
            "tokens": sum(int(s.corpus["tokens"]) for s in shards),
            "split": shards[0].corpus["split"], **part_metadata(pack_part(shards[0].corpus))}
