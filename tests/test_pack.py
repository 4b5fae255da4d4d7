"""Style pack round trip, and a clear, distinct error for each bad input."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from helpers import random_pack
from vllm_ngram_style.errors import CorpusError, StylePackError
from vllm_ngram_style.pack import METADATA_KEY, load_pack, save_pack
from vllm_ngram_style.tokenizer import load_tokenizer, tokenizer_fingerprint
from vllm_ngram_style.train import train_pack


@pytest.fixture
def pack_file(tmp_path):
    pack, _ = random_pack(np.random.default_rng(0), 50, 3, 8)
    path = str(tmp_path / "p.stylepack")
    save_pack(pack, path)
    return pack, path


def rewrite(path, out, meta_change=None, tensor_change=None):
    tensors = load_file(path)
    with safe_open(path, framework="numpy") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, out, metadata={METADATA_KEY: json.dumps(meta)})
    return out


def test_round_trip(pack_file):
    pack, path = pack_file
    back = load_pack(path)
    assert back.metadata() == pack.metadata()
    for a, b in zip(pack.tables, back.tables):
        for field in ("context_tokens", "context_total", "context_offsets", "entry_tokens", "entry_counts"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(pack.unigram_counts, back.unigram_counts)


def test_missing_file(tmp_path):
    with pytest.raises(StylePackError, match="not found"):
        load_pack(str(tmp_path / "nope.stylepack"))


def test_truncated_file(pack_file, tmp_path):
    _, path = pack_file
    data = open(path, "rb").read()
    bad = tmp_path / "t.stylepack"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(StylePackError, match="corrupt or truncated"):
        load_pack(str(bad))


def test_garbage_file(tmp_path):
    bad = tmp_path / "g.stylepack"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(StylePackError, match="corrupt or truncated"):
        load_pack(str(bad))


def test_flipped_byte_fails_checksum(pack_file, tmp_path):
    _, path = pack_file
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF  # inside the tensor payload
    bad = tmp_path / "f.stylepack"
    bad.write_bytes(bytes(data))
    with pytest.raises(StylePackError, match="checksum mismatch"):
        load_pack(str(bad))


def test_wrong_format_version(pack_file, tmp_path):
    _, path = pack_file
    out = rewrite(path, str(tmp_path / "v.stylepack"), meta_change=lambda m: m.update(format_version=99))
    with pytest.raises(StylePackError, match="format version 99 is not supported"):
        load_pack(out)


def test_not_a_style_pack(tmp_path):
    out = str(tmp_path / "other.safetensors")
    save_file({"x": np.zeros(3, np.float32)}, out)
    with pytest.raises(StylePackError, match="not a style pack"):
        load_pack(out)


def test_inconsistent_contents_with_valid_checksum(pack_file, tmp_path):
    """A pack whose checksum was recomputed over broken arrays is still refused."""
    from vllm_ngram_style import pack as pack_mod

    pack, _ = pack_file
    pack.tables[1].context_offsets = pack.tables[1].context_offsets[:-1]
    out = str(tmp_path / "i.stylepack")
    pack_mod.save_pack(pack, out)
    with pytest.raises(StylePackError, match="inconsistent contents"):
        load_pack(out)


def test_tokenizer_mismatch(pack_file, tiny_tokenizer_dir):
    _, path = pack_file
    tok = load_tokenizer(tiny_tokenizer_dir)
    with pytest.raises(StylePackError, match="another tokenizer"):
        load_pack(path).check_tokenizer(tokenizer_fingerprint(tok), len(tok))
    pack = load_pack(path)
    with pytest.raises(StylePackError, match="vocabulary size 50"):
        pack.check_tokenizer(pack.tokenizer_fingerprint, 51)


def test_train_errors(tiny_tokenizer_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n \n")
    with pytest.raises(CorpusError, match="holds no text"):
        train_pack(tiny_tokenizer_dir, [str(empty)], progress=False)
    with pytest.raises(CorpusError, match="corpus file not found"):
        train_pack(tiny_tokenizer_dir, [str(tmp_path / "missing.txt")], progress=False)
    (tmp_path / "no_files").mkdir()  # a folder is read file by file; an empty one is an error
    with pytest.raises(CorpusError, match="holds no files"):
        train_pack(tiny_tokenizer_dir, [str(tmp_path / "no_files")], progress=False)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(CorpusError, match="not UTF-8"):
        train_pack(tiny_tokenizer_dir, [str(binary)], progress=False)
    good = tmp_path / "good.txt"
    good.write_text("the knight rode on")
    for orders in (0, 7):
        with pytest.raises(StylePackError, match="orders must be between 1 and 6"):
            train_pack(tiny_tokenizer_dir, [str(good)], orders=orders, progress=False)
    with pytest.raises(StylePackError, match="tokenizer folder not found"):
        train_pack(str(tmp_path / "nomodel"), [str(good)], progress=False)


def test_unreadable_corpus(tiny_tokenizer_dir, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read files without read permission")
    f = tmp_path / "secret.txt"
    f.write_text("x")
    f.chmod(0)
    with pytest.raises(CorpusError, match="cannot read"):
        train_pack(tiny_tokenizer_dir, [str(f)], progress=False)


def test_train_and_load_with_real_tokenizer(tiny_tokenizer_dir, tmp_path):
    from vllm_ngram_style.testing.tiny import sample_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text(60, seed=1))
    pack, summary = train_pack(tiny_tokenizer_dir, [str(corpus)], orders=4, top_k=16, progress=False)
    path = str(tmp_path / "c.stylepack")
    save_pack(pack, path)
    back = load_pack(path)
    tok = load_tokenizer(tiny_tokenizer_dir)
    back.check_tokenizer(tokenizer_fingerprint(tok), len(tok))  # no error
    assert back.orders == 4 and summary.tokens == int(back.unigram_counts.sum())
    assert summary.documents == 20  # 60 sentences, 3 per paragraph


def test_end_to_end_don_quixote(corpora_dir, tiny_tokenizer_dir, tmp_path):
    path = os.path.join(corpora_dir, "cervantes_don_quixote.txt")
    pack, summary = train_pack(tiny_tokenizer_dir, [path], orders=3, top_k=512, progress=False)
    out = str(tmp_path / "dq.stylepack")
    save_pack(pack, out)
    back = load_pack(out)
    assert summary.documents > 4000 and summary.tokens > 500_000
    assert back.corpus["files"] == ["cervantes_don_quixote.txt"]
    assert all(t.entry_tokens.size > 0 for t in back.tables)
    assert int(np.diff(back.tables[1].context_offsets).max()) <= 512
