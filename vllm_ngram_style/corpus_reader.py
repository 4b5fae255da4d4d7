"""Streaming a corpus's documents from files of any size, exactly as the whole-text functions
(corpus.strip_gutenberg, resolve_split, split_documents) would split the whole file.

A text file is read twice, line by line: a first pass finds what needs the whole text (the first
Project Gutenberg START and END lines; for split 'auto', whether the kept region has a blank line,
i.e. a line of spaces and tabs between two newlines) and checks the encoding before any training
time is spent; the second yields documents. Split 'file' holds one file's words at a time (a file
is then one document). JSONL records are each read whole, split as their own text ('auto': by
paragraphs, so that a record without blank lines is one document). tests/test_corpus_reader.py
checks the streamed documents against the whole-text functions on random texts.
"""
from __future__ import annotations

import codecs
import io
import json
import os
import re
from typing import Iterator

from .corpus import (DEFAULT_ENCODING, DEFAULT_JSONL_FIELD, check_encoding, check_split, decode_error,
                     expand_corpus_paths, file_encoding, is_jsonl, open_binary, split_documents)
from .errors import CorpusError

_BLOCK_BYTES = 1 << 20
_START_LINE = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG")
_END_LINE = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG")


def _is_blank(line: str) -> bool:
    """A line the paragraph split treats as a separator: only spaces and tabs (possibly none)."""
    return not line.strip(" \t")


class _Progress:
    """Bytes of the corpus read so far (on disk: compressed bytes for .gz), for a progress bar;
    ``on_change(done)`` is called as it grows (once per block read)."""

    def __init__(self, on_change=None):
        self._done = 0
        self.on_change = on_change

    @property
    def done(self) -> int:
        return self._done

    @done.setter
    def done(self, value: int) -> None:
        self._done = value
        if self.on_change is not None:
            self.on_change(value)


def iter_lines(path: str, codec: str, progress: _Progress | None = None) -> Iterator[tuple[str, bool]]:
    """(line without its newline, whether a newline ended it) for every line of a file, newlines
    translated as text mode does ('\\r\\n' and '\\r' become '\\n')."""
    stream, raw = open_binary(path)
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder(codec)(errors="strict"), translate=True)
    consumed, base, pending = 0, 0 if progress is None else progress.done, ""
    try:
        with raw, stream:
            while True:
                block = stream.read(_BLOCK_BYTES)
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    raise decode_error(path, exc, codec, consumed + exc.start) from exc
                consumed += len(block)
                if progress is not None:
                    progress.done = base + raw.tell()
                lines = (pending + text).split("\n")
                pending = lines.pop()
                for line in lines:
                    yield line, True
                if not block:
                    break
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise CorpusError(f"cannot read corpus file {path!r}: {getattr(exc, 'strerror', None) or exc}") from exc
    if pending:
        yield pending, False


class _Scan:
    """What the first pass learns about a text file (line indices from 0)."""

    def __init__(self, path: str, codec: str, need_blank: bool, progress: _Progress | None = None):
        self.start = self.end = None  # first START line, first END line
        blank_any = blank_after_start = None  # first blank line that is a separator, overall / after START
        for i, (line, ended) in enumerate(iter_lines(path, codec, progress)):
            if line.startswith("***"):
                if self.start is None and _START_LINE.match(line):
                    self.start = i
                elif self.end is None and _END_LINE.match(line):
                    self.end = i
            if need_blank and ended and (blank_any is None or (self.start is not None and blank_after_start is None)):
                if _is_blank(line):
                    if blank_any is None and i > 0:  # the first line has no newline before it
                        blank_any = i
                    if self.start is not None and i > self.start and blank_after_start is None:
                        blank_after_start = i
        self.strip = self.start is not None and self.end is not None and self.end > self.start
        if self.strip:  # the kept region is the lines strictly between START and END
            self.has_blank = blank_after_start is not None and blank_after_start < self.end
        else:
            self.has_blank = blank_any is not None


def text_file_documents(path: str, split: str, codec: str, progress: _Progress | None = None,
                        scan: _Scan | None = None) -> Iterator[str]:
    """The documents of one text file, as split_documents(strip_gutenberg(whole text), split) gives
    them. scan: the file's first pass, when already made (with need_blank for split 'auto')."""
    scan = scan or _Scan(path, codec, need_blank=split == "auto")
    if split == "auto":
        split = "paragraph" if scan.has_blank else "line"
    first, stop = (scan.start + 1, scan.end) if scan.strip else (0, None)
    words: list[str] = []
    for i, (line, _) in enumerate(iter_lines(path, codec, progress)):
        if i < first:
            continue
        if stop is not None and i >= stop:
            break
        if split == "line":
            doc = line.strip()
            if doc:
                yield doc
        elif split == "paragraph" and _is_blank(line):
            if words:
                yield " ".join(words)
                words = []
        else:
            words += line.split()
    if words:
        yield " ".join(words)


def jsonl_documents(path: str, split: str, codec: str, field: str, progress: _Progress | None = None) -> Iterator[str]:
    """The documents of a JSONL file: each record's ``field``, split as its own text."""
    split = "paragraph" if split == "auto" else split
    for i, (line, _) in enumerate(iter_lines(path, codec, progress), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{i}: not a JSON object ({exc.msg}): {line[:60]!r}") from exc
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            what = "not a JSON object" if not isinstance(record, dict) else (
                f"no {field!r} field (fields: {', '.join(str(k)[:20] for k in list(record)[:8])})" if field not in record
                else f"field {field!r} is not a string")
            raise CorpusError(f"{path}:{i}: {what}; name the text field with --jsonl-field")
        yield from split_documents(text, split)


class CorpusReader:
    """Iterates over the documents of every corpus file in turn; ``bytes_done`` of ``total_bytes``
    tell how far it is (for a progress bar). All paths are checked when it is made; ``check`` reads
    every file once more to check its encoding (and find what the split needs) before any is used."""

    def __init__(self, paths: list[str], split: str = "auto", encoding: str = DEFAULT_ENCODING,
                 jsonl_field: str = DEFAULT_JSONL_FIELD):
        self.split = check_split(split)
        self.encoding = check_encoding(encoding)
        self.jsonl_field = jsonl_field
        self.files = expand_corpus_paths(paths)
        self.total_bytes = sum(os.path.getsize(f) for f in self.files)
        self._progress = _Progress()
        self._checked = _Progress()
        self._plan: dict[str, tuple[str, _Scan]] = {}  # path -> (codec, first pass)

    @property
    def bytes_done(self) -> int:
        return self._progress.done

    def _file_plan(self, path: str) -> tuple[str, _Scan]:
        if path not in self._plan:
            codec = file_encoding(path, self.encoding)
            self._plan[path] = codec, _Scan(path, codec, self.split == "auto" and not is_jsonl(path), self._checked)
        return self._plan[path]

    def check(self, on_progress=None) -> None:
        """Decode every file (CorpusError for the first that fails), so that a bad file stops the run
        before any time is spent counting; ``on_progress(bytes checked)`` follows it."""
        self._checked.on_change = on_progress
        base = 0
        for path in self.files:
            self._checked.done = base
            self._file_plan(path)
            base += os.path.getsize(path)
            self._checked.done = base

    def __iter__(self) -> Iterator[str]:
        base = 0
        for path in self.files:
            codec, scan = self._file_plan(path)
            self._progress.done = base
            if is_jsonl(path):
                yield from jsonl_documents(path, self.split, codec, self.jsonl_field, self._progress)
            elif self.split == "file":  # one document per file: the whole file's words
                words = []
                for doc in text_file_documents(path, "line", codec, self._progress, scan):
                    words += doc.split()
                if words:
                    yield " ".join(words)
            else:
                yield from text_file_documents(path, self.split, codec, self._progress, scan)
            self._plan.pop(path)
            base += os.path.getsize(path)
            self._progress.done = base


def iter_corpus_documents(paths: list[str], split: str = "auto", encoding: str = DEFAULT_ENCODING,
                          jsonl_field: str = DEFAULT_JSONL_FIELD) -> Iterator[str]:
    """Yield the documents of every corpus file in turn, streaming (corpus_reader.CorpusReader).
    Paths are all checked before any is read."""
    return iter(CorpusReader(paths, split, encoding, jsonl_field))
