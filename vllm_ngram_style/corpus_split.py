"""A deterministic split of a corpus's documents into a training part and a held-out part.

Style measured under the same counts that steer is partly circular, so evaluation trains the
steering pack on one part and measures style (held-out style perplexity, classifiers) on the
other. Documents come from a streaming reader whose total count is unknown up front, so a
document's part depends only on its index in the stream (0, 1, 2, ... over every file in turn):
documents are taken in contiguous blocks of BLOCK_DOCS, and block b is held out when
b % BLOCK_CYCLE is in HELDOUT_BLOCKS (3 of 10 blocks: 30% of the documents, up to the last,
partial cycle). Blocks rather than single documents: neighbouring paragraphs of a novel share
names and scenes, and a document-by-document interleave would leak them into both parts.

The scheme is recorded beside the part in a pack's corpus metadata (SCHEME), so that a later
change of the constants is visible. Counting shards (`count --part`) split each shard's own
documents by their index within that shard: shards counted with the same part are disjoint from
those counted with the other, but their union is not the whole-corpus split of `train --part`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .errors import CorpusError

PARTS = ("all", "train", "heldout")
BLOCK_DOCS = 20  # documents per block: a few pages of prose, or 20 headlines / verses
BLOCK_CYCLE = 10
HELDOUT_BLOCKS = frozenset({3, 6, 9})  # spread over the cycle, so no long stretch of a book is held out
HELDOUT_FRACTION = len(HELDOUT_BLOCKS) / BLOCK_CYCLE
SCHEME = f"blocks of {BLOCK_DOCS} documents; block b held out when b % {BLOCK_CYCLE} in {sorted(HELDOUT_BLOCKS)}"


def check_part(part: str) -> str:
    if part not in PARTS:
        raise CorpusError(f"unknown corpus part {str(part)[:40]!r}; choose one of {', '.join(PARTS)}")
    return part


def document_part(index: int) -> str:
    """'train' or 'heldout': the part of the document at ``index`` (from 0) of a corpus's stream."""
    if index < 0:
        raise CorpusError(f"document index must be non-negative, got {index}")
    return "heldout" if (index // BLOCK_DOCS) % BLOCK_CYCLE in HELDOUT_BLOCKS else "train"


def in_part(index: int, part: str) -> bool:
    return part == "all" or document_part(index) == part


def select_part(docs: Iterable[str], part: str) -> Iterator[str]:
    """The documents of ``part`` ('all': every one), in their order, streaming."""
    check_part(part)
    for i, doc in enumerate(docs):
        if in_part(i, part):
            yield doc


def part_metadata(part: str) -> dict:
    """What a pack or shard records of its part: nothing for 'all', so that packs of a whole corpus
    keep the metadata (and checksum) they had before parts existed; older packs read as 'all'."""
    check_part(part)
    return {} if part == "all" else {"part": part, "part_scheme": SCHEME}


def pack_part(corpus_meta: dict) -> str:
    """The part a pack's (or shard's) corpus metadata says it was counted on ('all' when unsaid)."""
    return str((corpus_meta or {}).get("part", "all"))


class PartReader:
    """A document reader (corpus_reader.CorpusReader) passing on only one part's documents; its
    progress attributes (bytes_done, total_bytes, files, check) are the whole reader's."""

    def __init__(self, reader, part: str):
        self.reader = reader
        self.part = check_part(part)

    def __getattr__(self, name):  # bytes_done, total_bytes, files, check, ...
        return getattr(self.reader, name)

    def __iter__(self) -> Iterator[str]:
        return select_part(self.reader, self.part)
