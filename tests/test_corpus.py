"""The corpus shipped with the package: the demo's default on a clone without ../shared."""
import gzip

import pytest

from vllm_ngram_style.corpus_reader import iter_corpus_documents
from vllm_ngram_style.corpus import (builtin_corpus_path, read_text,
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


def test_bom_is_dropped_not_trained_on(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfFirst line\n\nsecond\n")
    assert read_text(str(f)) == "First line\n\nsecond\n"
    assert list(iter_corpus_documents([str(f)])) == ["First line", "second"]


def test_cp1252_is_refused_with_a_hint_and_readable_when_named(tmp_path):
    f = tmp_path / "old.txt"
    par = ("En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que viv\u00eda un "
           "hidalgo de los de lanza en astillero, adarga antigua, roc\u00edn flaco y galgo corredor. \u00bfQu\u00e9 "
           "dir\u00e1 el se\u00f1or? \u00a1Ay, Sancho! \u201cCaf\u00e9,\u201d said the na\u00efve gentleman \u2014 and so on.")
    f.write_bytes(((par + "\n\n") * 10).encode("cp1252"))
    for read in (lambda: read_text(str(f)), lambda: list(iter_corpus_documents([str(f)]))):
        with pytest.raises(CorpusError, match=r"not UTF-8 text .*--encoding cp1252.*--encoding auto"):
            read()
    assert list(iter_corpus_documents([str(f)], encoding="cp1252")) == [par] * 10
    # charset-normalizer's guess (on short or unusual texts it may guess a sibling code page)
    assert list(iter_corpus_documents([str(f)], encoding="auto")) == [par] * 10
    with pytest.raises(CorpusError, match="unknown text encoding 'klingon'"):
        list(iter_corpus_documents([str(f)], encoding="klingon"))


def test_utf8_auto_and_empty_file(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("Caf\u00e9 \u00e0 la cr\u00e8me.\n", encoding="utf-8")
    assert list(iter_corpus_documents([str(f)], encoding="auto")) == ["Caf\u00e9 \u00e0 la cr\u00e8me."]
    (tmp_path / "e.txt").write_bytes(b"")
    assert list(iter_corpus_documents([str(tmp_path / "e.txt")], encoding="auto")) == []


def test_folder_input_is_every_visible_file_sorted(tmp_path):
    d = tmp_path / "docs"
    (d / "b").mkdir(parents=True)
    (d / "z.txt").write_text("zed\n")
    (d / "b" / "a.txt").write_text("bee a\n")
    with gzip.open(d / "c.txt.gz", "wt") as fh:
        fh.write("see\n")
    (d / ".hidden").write_text("never\n")
    (d / ".git").mkdir()
    (d / ".git" / "x").write_text("never\n")
    assert list(iter_corpus_documents([str(d)])) == ["bee a", "see", "zed"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no files"):
        list(iter_corpus_documents([str(tmp_path / "empty")]))


def test_jsonl_field_and_errors(tmp_path):
    f = tmp_path / "posts.jsonl"
    f.write_text('{"id": 1, "body": "Hello there,\\nfriend.\\n\\nSecond paragraph."}\n\n'
                 '{"id": 2, "body": "One more"}\n')
    assert list(iter_corpus_documents([str(f)], jsonl_field="body")) == [
        "Hello there, friend.", "Second paragraph.", "One more"]
    assert list(iter_corpus_documents([str(f)], split="line", jsonl_field="body")) == [
        "Hello there,", "friend.", "Second paragraph.", "One more"]
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as fh:
        fh.write('{"text": "zipped"}\n')
    assert list(iter_corpus_documents([str(tmp_path / "p.jsonl.gz")])) == ["zipped"]
    with pytest.raises(CorpusError, match=r"posts.jsonl:1: no 'text' field \(fields: id, body\).*--jsonl-field"):
        list(iter_corpus_documents([str(f)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\nnot json\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: field 'text' is not a string"):
        list(iter_corpus_documents([str(bad)]))
    bad.write_text('{"text": "ok"}\nnot json at all\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: not a JSON object"):
        list(iter_corpus_documents([str(bad)]))


def test_every_file_is_checked_before_any_is_counted(tmp_path, monkeypatch):
    from vllm_ngram_style.corpus_reader import CorpusReader

    good, bad = tmp_path / "a.txt", tmp_path / "b.txt"
    good.write_text("fine text\n")
    bad.write_bytes(b"fine\n" * 1000 + b"caf\xe9\n")
    reader = CorpusReader([str(good), str(bad)])
    with pytest.raises(CorpusError, match=r"b.txt' is not UTF-8 text \(invalid continuation byte at byte 5003\)"):
        reader.check()
    assert reader.bytes_done == 0  # nothing was read for counting
