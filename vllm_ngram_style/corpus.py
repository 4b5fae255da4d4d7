"""Reading corpora into documents.

A document is the unit no n-gram may cross: a paragraph of prose (blank-line separated, with its
hard line wraps joined), or a line of one-item-per-line corpora (headlines, verses).
"""
from __future__ import annotations

import gzip
import os
import re
from typing import Iterator

from .errors import CorpusError

SPLIT_MODES = ("auto", "paragraph", "line", "file")

# Corpora that ship inside the package (public domain, gzip'd), usable by name wherever a corpus
# path is expected: a fresh clone has no ../shared, and the demo must still run.
BUILTIN_CORPORA = {"don_quixote": "don_quixote.txt.gz"}  # Ormsby's translation, no Gutenberg header/licence

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M)


def builtin_corpus_path(name: str) -> str | None:
    """The file of a corpus shipped with the package, or None when ``name`` is not one."""
    if name not in BUILTIN_CORPORA:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", BUILTIN_CORPORA[name])


def resolve_corpus_path(path: str) -> str:
    """A corpus argument: an existing path as given, else the name of a built-in corpus."""
    if not os.path.exists(path) and builtin_corpus_path(path) is not None:
        return builtin_corpus_path(path)
    return path


def read_text(path: str) -> str:
    """Read a UTF-8 corpus file (gzip'd when it ends in .gz), with a clear error for each way that can fail."""
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path!r}")
    if os.path.isdir(path):
        raise CorpusError(f"corpus path is a folder, not a text file: {path!r}")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="strict") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise CorpusError(f"cannot read corpus file {path!r}: {getattr(exc, 'strerror', None) or exc}") from exc


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence, which are not the author's style."""
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text)
    if start and end and end.start() > start.end():
        return text[start.end():end.start()]
    return text


def resolve_split(text: str, split: str) -> str:
    """'auto' -> 'paragraph' when the text has blank lines, else 'line'; other modes unchanged."""
    if split == "auto":
        return "paragraph" if re.search(r"\n[ \t]*\n", text.replace("\r\n", "\n")) else "line"
    return split


def split_documents(text: str, split: str = "auto") -> list[str]:
    """Split a corpus's text into documents (see the module docstring)."""
    if split not in SPLIT_MODES:
        raise CorpusError(f"unknown split mode {split!r}; choose one of {', '.join(SPLIT_MODES)}")
    text = text.replace("\r\n", "\n")
    split = resolve_split(text, split)
    if split == "file":
        docs = [" ".join(text.split())]
    elif split == "line":
        docs = [line.strip() for line in text.split("\n")]
    else:
        docs = [" ".join(par.split()) for par in re.split(r"\n[ \t]*\n", text)]
    return [d for d in docs if d]


def iter_corpus_documents(paths: list[str], split: str = "auto") -> Iterator[str]:
    """Yield the documents of every corpus file in turn. Paths are all checked before any is read."""
    if not paths:
        raise CorpusError("no corpus file given")
    paths = [resolve_corpus_path(p) for p in paths]
    for path in paths:
        if not os.path.isfile(path):
            read_text(path)  # raises the precise error
    for path in paths:
        yield from split_documents(strip_gutenberg(read_text(path)), split)
