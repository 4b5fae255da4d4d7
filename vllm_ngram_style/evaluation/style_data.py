"""The style classifiers' examples: held-out corpus text, cut to about a generation's length.

Positives are chunks of the HELD-OUT part of the style's corpus (corpus_split.py), so a classifier
never sees a document the steering pack was trained on (when that pack was trained --part train).
Negatives are the model's own unsteered replies to prompts that are not evaluation prompts
(prompts.load_negative_prompts), plus held-out chunks of other corpora. Generations are 100-250
words; corpus documents are anything from a 10-word headline to a 600-word paragraph, and a
classifier would learn length instead of style, so consecutive held-out documents are merged into
chunks of a target length (and long documents cut), never across a gap between held-out blocks
(the text on either side of a gap is not contiguous).

Every chunk carries a group: its corpus's name and the document it starts in, so the pieces of one
long document (a Brown sample is ~2,000 words) stay in one cross-validation fold
(StratifiedGroupKFold) rather than scoring a chunk against its own continuation. Not the whole
held-out block: a corpus of few, long documents (Brown "learned": 80) holds one held-out block,
which would leave a single group and no folds.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..corpus_split import BLOCK_DOCS, document_part
from ..errors import ConfigError

CHUNK_MIN_WORDS = 100
CHUNK_MAX_WORDS = 250
MAX_POSITIVE_CHUNKS = 400  # evenly spaced over the held-out part: bounded embedding time, balanced classes
MAX_NEGATIVE_CORPUS_CHUNKS = 150  # per other corpus, so the model's own replies stay a large share of negatives


@dataclass
class Example:
    text: str
    label: int  # 1: the style, 0: not
    group: str  # cross-validation group (one source passage or one prompt)
    source: str  # corpus name, or "replies"


def target_words(replies: list, max_tokens: int) -> int:
    """Chunk length: the median word count of the model's replies, within [100, 250] words (a token
    is about 0.75 words when there are no replies to measure)."""
    words = [len(r["text"].split()) for r in replies if r.get("text", "").strip()]
    guess = float(np.median(words)) if words else 0.75 * max_tokens
    return int(min(CHUNK_MAX_WORDS, max(CHUNK_MIN_WORDS, round(guess))))


def heldout_chunks(documents, words: int) -> list:
    """(index of the document it starts in, text) chunks of about ``words`` words from a corpus's
    documents (an iterable of str in stream order, e.g. a CorpusReader): only held-out documents
    are read; a chunk never spans two held-out blocks; a block's short remainder (< words / 2) is
    dropped."""
    out, buf, block, first = [], [], None, None

    def flush():
        if len(buf) >= words / 2:
            out.append((first, " ".join(buf)))
        buf.clear()

    for i, doc in enumerate(documents):
        if document_part(i) != "heldout":
            continue
        if i // BLOCK_DOCS != block:
            flush()
            block = i // BLOCK_DOCS
        if not buf:
            first = i
        buf.extend(doc.split())
        while len(buf) >= words:
            out.append((first, " ".join(buf[:words])))
            del buf[:words]
            first = i  # what is left over is this document's
    flush()
    return out


def evenly(items: list, limit: int) -> list:
    """At most ``limit`` items, evenly spaced over the list (deterministic; all when fewer)."""
    if len(items) <= limit:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(np.int64))  # [<= limit]
    return [items[i] for i in idx]


def corpus_examples(name: str, path: str, label: int, words: int, limit: int, split: str = "auto",
                    encoding: str = "utf-8") -> list:
    """Held-out chunks of one corpus as Examples (ConfigError when it has none)."""
    from ..corpus_reader import CorpusReader

    chunks = evenly(heldout_chunks(CorpusReader([path], split, encoding), words), limit)
    if not chunks:
        raise ConfigError(f"corpus {name!r} ({os.path.basename(path)[:60]}) has no held-out text of {words} words "
                          f"to train a style classifier on (its held-out part begins at document {3 * BLOCK_DOCS + 1})")
    return [Example(text, label, f"{name}#{doc}", name) for doc, text in chunks]


def reply_examples(replies: list) -> list:
    """The model's unsteered replies as negatives, grouped by prompt (its greedy and sampled replies
    stay in one fold)."""
    return [Example(r["text"], 0, f"replies#{r['prompt_id']}", "replies") for r in replies if r["text"].strip()]


def style_examples(style: str, style_corpora: dict, negative_corpora: list, replies: list, words: int,
                   splits: dict | None = None) -> list:
    """Examples for one style's classifier: its corpus's held-out chunks (positives); the replies,
    the other styles' corpora and the negative corpora's held-out chunks (negatives)."""
    splits = splits or {}
    out = corpus_examples(style, style_corpora[style], 1, words, MAX_POSITIVE_CHUNKS, splits.get(style, "auto"))
    out += reply_examples(replies)
    others = [(n, p) for n, p in style_corpora.items() if n != style]
    others += [(os.path.splitext(os.path.basename(p))[0], p) for p in negative_corpora]
    seen = {os.path.abspath(style_corpora[style])}
    for n, p in others:
        if os.path.abspath(p) in seen:  # the style's own corpus is never a negative
            continue
        seen.add(os.path.abspath(p))
        out += corpus_examples(n, p, 0, words, MAX_NEGATIVE_CORPUS_CHUNKS, splits.get(n, "auto"))
    return out


def describe(examples: list) -> dict:
    """Counts per source and label, for the report."""
    out: dict = {}
    for e in examples:
        key = f"{'style' if e.label else 'other'}:{e.source}"
        out[key] = out.get(key, 0) + 1
    return out


def median_words(texts: list) -> float:
    words = [len(t.split()) for t in texts]
    return float(np.median(words)) if words else math.nan
