"""The corpus shipped with the package: the demo's default on a clone without ../shared."""
import gzip

import pytest

from vllm_ngram_style.corpus import (builtin_corpus_path, iter_corpus_documents, read_text,
                                     resolve_corpus_path)
from vllm_ngram_style.errors import CorpusError


def test_builtin_corpus_is_clean_public_domain_text():
    path = resolve_corpus_path("don_quixote")
    assert path == builtin_corpus_path("don_quixote") and path.endswith(".txt.gz")
    text = read_text(path)
    assert 2_000_000 < len(text) < 2_500_000
    assert "gutenberg" not in text.lower()  # header, licence and trademark dropped
    assert "Full Size" not in text and ".jpg" not in text  # image captions of the HTML conversion
    assert "In a village of La Mancha" in text
    docs = list(iter_corpus_documents(["don_quixote"]))
    assert len(docs) > 4000 and all(docs)


def test_a_real_path_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "don_quixote").write_text("my own text\n\nsecond paragraph\n")
    assert list(iter_corpus_documents(["don_quixote"])) == ["my own text", "second paragraph"]


def test_gzip_corpus_and_truncated_gzip(tmp_path):
    good = tmp_path / "c.txt.gz"
    with gzip.open(good, "wt", encoding="utf-8") as fh:
        fh.write("one\n\ntwo\n")
    assert list(iter_corpus_documents([str(good)])) == ["one", "two"]
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(good.read_bytes()[:12])
    with pytest.raises(CorpusError, match="cannot read corpus file"):
        read_text(str(bad))
    assert resolve_corpus_path("no_such_corpus") == "no_such_corpus"
