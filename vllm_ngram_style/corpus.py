"""Reading corpora into documents.

A document is the unit no n-gram may cross: a paragraph of prose (blank-line separated, with its
hard line wraps joined), or a line of one-item-per-line corpora (headlines, verses).

A corpus is one or more files or folders (every non-hidden file below a folder, in sorted
order), or the name of a corpus shipped with the package. Files may be gzip'd (.gz); files named
*.jsonl / *.ndjson (optionally .gz) hold one JSON object per line whose text field (``jsonl_field``)
is read. Text is decoded as UTF-8 by default, a byte-order mark dropped; another encoding may be
named, or ``auto`` detected with charset-normalizer. This module holds paths, encodings and the
whole-text functions; corpus_reader.py streams documents from files of any size.
"""
from __future__ import annotations

import codecs
import gzip
import os
import re
from typing import Iterator

from .errors import CorpusError

SPLIT_MODES = ("auto", "paragraph", "line", "file")
DEFAULT_ENCODING = "utf-8"
AUTO_ENCODING = "auto"
DEFAULT_JSONL_FIELD = "text"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_DETECT_BYTES = 1 << 20  # charset-normalizer looks at the first MiB of each file

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


def is_jsonl(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def expand_corpus_paths(paths: list[str]) -> list[str]:
    """Every corpus file the arguments name, in order: files as given, folders expanded to their
    non-hidden files (recursively, sorted), built-in names resolved. All are checked to exist."""
    if not paths:
        raise CorpusError("no corpus file given")
    files = []
    for arg in paths:
        path = resolve_corpus_path(arg)
        if not os.path.exists(path):
            raise CorpusError(f"corpus file not found: {arg!r}")
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
            if not found:
                raise CorpusError(f"corpus folder {arg!r} holds no files")
            files += sorted(found)  # by path: a sub-folder sorts among the files
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CorpusError(f"corpus path {arg!r} is not a regular file or folder")
    return files


def open_binary(path: str):
    """(stream of the file's bytes, decompressed when it ends in .gz; the raw file, whose tell() is
    the progress through the file on disk)."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path!r}: {exc.strerror or exc}") from exc
    return (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw), raw


def check_encoding(encoding: str) -> str:
    """The encoding name as given, after checking Python knows it (or it is 'auto')."""
    if encoding == AUTO_ENCODING:
        return encoding
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError) as exc:
        raise CorpusError(f"unknown text encoding {str(encoding)[:40]!r}; give a Python codec name "
                          "such as utf-8, cp1252 or latin-1, or 'auto' to detect it") from exc
    return encoding


def python_encoding(encoding: str) -> str:
    """The codec to decode with: UTF-8 as utf-8-sig, so that a byte-order mark is dropped, not trained on."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def detect_encoding(path: str) -> str:
    """charset-normalizer's guess for a file, from its first MiB (ASCII is read as UTF-8)."""
    from charset_normalizer import from_bytes

    stream, raw = open_binary(path)
    try:
        with raw, stream:
            sample = stream.read(_DETECT_BYTES)
    except (OSError, EOFError) as exc:
        raise CorpusError(f"cannot read corpus file {path!r}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not sample:
        return "utf-8-sig"
    best = from_bytes(sample).best()
    if best is None:
        raise CorpusError(f"cannot detect the text encoding of {path!r}; name it with --encoding (e.g. cp1252)")
    return "utf-8-sig" if best.encoding in ("ascii", "utf_8") else best.encoding


def file_encoding(path: str, encoding: str) -> str:
    """The codec one file is decoded with, for an --encoding value (a name, or 'auto')."""
    return detect_encoding(path) if encoding == AUTO_ENCODING else python_encoding(check_encoding(encoding))


def decode_error(path: str, exc: UnicodeDecodeError, encoding: str, at: int | None = None) -> CorpusError:
    """The message for a file that is not in the encoding it is read with, suggesting --encoding."""
    where = exc.start if at is None else at
    name = "UTF-8" if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") else encoding
    return CorpusError(f"corpus file {path!r} is not {name} text ({exc.reason} at byte {where}); "
                       "if it is in another encoding, name it with --encoding (e.g. --encoding cp1252, "
                       "common for older Gutenberg texts) or use --encoding auto to detect it")


def read_text(path: str, encoding: str = DEFAULT_ENCODING) -> str:
    """Read a whole corpus file (gzip'd when it ends in .gz) in ``encoding`` ('auto' detects it),
    a UTF-8 byte-order mark dropped, with a clear error for each way that can fail."""
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path!r}")
    if os.path.isdir(path):
        raise CorpusError(f"corpus path is a folder, not a text file: {path!r}")
    codec = file_encoding(path, encoding)
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding=codec, errors="strict") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, codec) from exc
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


def check_split(split: str) -> str:
    if split not in SPLIT_MODES:
        raise CorpusError(f"unknown split mode {str(split)[:40]!r}; choose one of {', '.join(SPLIT_MODES)}")
    return split


def split_documents(text: str, split: str = "auto") -> list[str]:
    """Split a corpus's text into documents (see the module docstring)."""
    check_split(split)
    text = text.replace("\r\n", "\n")
    split = resolve_split(text, split)
    if split == "file":
        docs = [" ".join(text.split())]
    elif split == "line":
        docs = [line.strip() for line in text.split("\n")]
    else:
        docs = [" ".join(par.split()) for par in re.split(r"\n[ \t]*\n", text)]
    return [d for d in docs if d]
