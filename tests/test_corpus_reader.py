"""Streamed documents equal splitting the whole text at once (corpus.split_documents(strip_gutenberg(...)))."""
import gzip

import numpy as np
import pytest

from vllm_ngram_style import corpus_reader
from vllm_ngram_style.corpus import read_text, split_documents, strip_gutenberg
from vllm_ngram_style.corpus_reader import CorpusReader

PIECES = ["a", "bc d", " ", "\t", "", "\x0c", "\u2028x", "caf\u00e9 \u00e0", "\u3000",
          "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "*** END OF THE PROJECT GUTENBERG EBOOK X ***",
          "***START OF THIS PROJECT GUTENBERG", "  word  "]
NEWLINES = ["\n", "\r\n", "\r", "\n\n", " \n", "\n\t\n"]


def random_text(rng) -> str:
    text = "".join(str(rng.choice(PIECES)) + str(rng.choice(NEWLINES)) for _ in range(rng.integers(0, 14)))
    if rng.random() < 0.3:
        text = text.rstrip("\r\n")
    return ("\ufeff" if rng.random() < 0.2 else "") + text


@pytest.mark.parametrize("block", [3, 1 << 20])  # 3 bytes: lines, '\r\n' and UTF-8 characters cut across reads
def test_streamed_documents_equal_whole_text_splitting(block, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_reader, "_BLOCK_BYTES", block)
    rng = np.random.default_rng(block)
    for trial in range(400):
        text = random_text(rng)
        path = tmp_path / (f"t{trial}.txt" + (".gz" if trial % 4 == 0 else ""))
        data = text.encode("utf-8")
        if trial % 4 == 0:
            with gzip.open(path, "wb") as fh:
                fh.write(data)
        else:
            path.write_bytes(data)
        for split in ("auto", "paragraph", "line", "file"):
            want = split_documents(strip_gutenberg(read_text(str(path))), split)
            assert list(CorpusReader([str(path)], split)) == want, (text, split)


def test_progress_reaches_the_file_sizes(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt.gz"
    a.write_text("one\n\ntwo\n" * 1000)
    with gzip.open(b, "wt") as fh:
        fh.write("three\n" * 1000)
    reader = CorpusReader([str(a), str(b)])
    assert reader.total_bytes == a.stat().st_size + b.stat().st_size
    seen = []
    for _ in reader:
        seen.append(reader.bytes_done)
    assert seen == sorted(seen) and reader.bytes_done == reader.total_bytes
