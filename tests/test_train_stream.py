"""Streaming training, shards and merges give the exact pack of today's in-memory training."""
import os
from collections import Counter

import numpy as np
import pytest

from vllm_ngram_style import pack_writer
from vllm_ngram_style.cli import main as cli_main
from vllm_ngram_style.corpus import read_text, resolve_corpus_path, split_documents, strip_gutenberg
from vllm_ngram_style.counting import OrderCounts, build_top_k_table
from vllm_ngram_style.errors import StylePackError
from vllm_ngram_style.merging import merge_shards
from vllm_ngram_style.pack import StylePack, default_weights, load_pack, save_pack
from vllm_ngram_style.tokenizer import load_tokenizer, tokenizer_fingerprint
from vllm_ngram_style.train import count_to_shard, parse_memory, train_pack, train_to_file

TINY_BUDGET = 40_000  # bytes: forces several spills on these corpora


def reference_pack(tok_dir, paths, orders=3, top_k=512, split="auto", kneser_ney=False) -> StylePack:
    """Training as it was before streaming, written out plainly: every document in a list, every
    token id in memory, n-grams counted with a Counter, tables by counting.build_top_k_table."""
    docs = [d for p in paths for d in split_documents(strip_gutenberg(read_text(resolve_corpus_path(p))), split)]
    tok = load_tokenizer(tok_dir)
    encoded = [np.asarray(e.ids, np.int32) for e in tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)]
    encoded = [e for e in encoded if e.size]
    vocab = len(tok)
    counts = []
    for n in range(1, orders + 1):
        c = Counter(tuple(e[i:i + n].tolist()) for e in encoded for i in range(e.size - n + 1))
        grams = sorted(c)
        counts.append(OrderCounts(n, np.array(grams, np.int32).reshape(-1, n), np.array([c[g] for g in grams], np.int64)))
    unigram = np.bincount(np.concatenate(encoded), minlength=vocab).astype(np.int64)
    backoff = None
    if kneser_ney:
        from vllm_ngram_style.kneser_ney import estimate_kneser_ney

        backoff = estimate_kneser_ney(counts, vocab, top_k)
    meta = {"files": [os.path.basename(p) for p in paths], "documents": len(encoded),
            "tokens": int(sum(e.size for e in encoded)), "split": split}
    return StylePack([build_top_k_table(c, top_k) for c in counts], unigram, vocab, tokenizer_fingerprint(tok),
                     1e-3, top_k, default_weights(orders), meta, os.path.splitext(os.path.basename(paths[0]))[0], backoff)


def pack_bytes(pack, path) -> bytes:
    save_pack(pack, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def small_corpora(tmp_path_factory):
    """Two prose files (one gzip'd) and a one-item-per-line file, from the tiny sample text."""
    import gzip

    from vllm_ngram_style.testing.tiny import sample_text

    d = tmp_path_factory.mktemp("corpora")
    (d / "a.txt").write_text(sample_text(300, seed=1))
    with gzip.open(d / "b.txt.gz", "wt") as fh:
        fh.write(sample_text(200, seed=2))
    (d / "c.txt").write_text(sample_text(150, seed=3).replace("\n\n", "\n"))
    return [str(d / "a.txt"), str(d / "b.txt.gz"), str(d / "c.txt")]


@pytest.mark.parametrize("orders", [3, 6])
def test_streaming_is_bit_identical_to_in_memory_training(tiny_tokenizer_dir, small_corpora, tmp_path, orders):
    want = pack_bytes(reference_pack(tiny_tokenizer_dir, small_corpora, orders, top_k=8), tmp_path / "ref")
    pack, _ = train_pack(tiny_tokenizer_dir, small_corpora, orders, top_k=8, progress=False)
    assert pack_bytes(pack, tmp_path / "mem") == want
    spill = tmp_path / "spill"
    spill.mkdir()
    for memory in (None, TINY_BUDGET, "2G"):
        summary = train_to_file(str(tmp_path / "s"), tiny_tokenizer_dir, small_corpora, orders, top_k=8,
                                progress=False, memory=memory, spill_dir=str(spill))
        assert (tmp_path / "s").read_bytes() == want, memory
        assert (summary.spills > 0) == (memory == TINY_BUDGET)
    assert os.listdir(spill) == []


def test_real_corpus_subset_matches_todays_training(corpora_dir, tiny_tokenizer_dir, tmp_path):
    dq = read_text(os.path.join(corpora_dir, "cervantes_don_quixote.txt"))
    subset = tmp_path / "dq_subset.txt"  # its Gutenberg header, some chapters, and the END line and licence
    subset.write_text(dq[:120_000] + dq[-25_000:])
    paths = [str(subset), os.path.join(corpora_dir, "news_headlines_2017.txt")]
    want = pack_bytes(reference_pack(tiny_tokenizer_dir, paths), tmp_path / "ref")
    summary = train_to_file(str(tmp_path / "s"), tiny_tokenizer_dir, paths, progress=False, memory="400K")
    assert (tmp_path / "s").read_bytes() == want and summary.spills >= 2
    assert "Gutenberg" not in str(load_pack(str(tmp_path / "s")).corpus)


def test_kneser_ney_from_spilled_counts(tiny_tokenizer_dir, small_corpora, tmp_path):
    want = pack_bytes(reference_pack(tiny_tokenizer_dir, small_corpora, 3, top_k=8, kneser_ney=True), tmp_path / "ref")
    train_to_file(str(tmp_path / "kn"), tiny_tokenizer_dir, small_corpora, 3, top_k=8, progress=False,
                  kneser_ney=True, memory=TINY_BUDGET)
    assert (tmp_path / "kn").read_bytes() == want


def test_shards_merge_to_the_pack_of_the_whole(tiny_tokenizer_dir, small_corpora, tmp_path):
    whole = tmp_path / "whole.stylepack"
    train_to_file(str(whole), tiny_tokenizer_dir, small_corpora, 4, top_k=8, progress=False)
    shards = []
    for i, (path, memory) in enumerate(zip(small_corpora, (None, TINY_BUDGET, "1M"))):
        shards.append(str(tmp_path / f"part{i}.counts"))
        count_to_shard(shards[-1], tiny_tokenizer_dir, [path], 4, progress=False, memory=memory)
    merge_shards(shards, str(tmp_path / "merged.stylepack"), top_k=8, memory=TINY_BUDGET)
    assert (tmp_path / "merged.stylepack").read_bytes() == whole.read_bytes()
    # in stages: two shards into one, then with the third
    merge_shards(shards[:2], str(tmp_path / "ab.counts"), counts_only=True)
    merge_shards([str(tmp_path / "ab.counts"), shards[2]], str(tmp_path / "staged.stylepack"), top_k=8)
    assert (tmp_path / "staged.stylepack").read_bytes() == whole.read_bytes()
    # the command line, as a cluster task would run it
    assert cli_main(["count", "--tokenizer", tiny_tokenizer_dir, "--corpus", small_corpora[0], "--orders", "4",
                     "--out", str(tmp_path / "cli0.counts"), "--quiet", "--memory", "64K"]) == 0
    assert (tmp_path / "cli0.counts").read_bytes() == open(shards[0], "rb").read()
    assert cli_main(["merge", str(tmp_path / "cli0.counts"), *shards[1:], "--top-k", "8",
                     "--out", str(tmp_path / "cli.stylepack")]) == 0
    assert (tmp_path / "cli.stylepack").read_bytes() == whole.read_bytes()


def test_bad_shards_are_refused(tiny_tokenizer_dir, small_corpora, tmp_path):
    a, b = str(tmp_path / "a.counts"), str(tmp_path / "b.counts")
    count_to_shard(a, tiny_tokenizer_dir, small_corpora[:1], 3, progress=False)
    count_to_shard(b, tiny_tokenizer_dir, small_corpora[1:2], 2, progress=False)
    with pytest.raises(StylePackError, match="differ in orders"):
        merge_shards([a, b], str(tmp_path / "x"))
    data = bytearray(open(a, "rb").read())
    data[-3] ^= 1
    (tmp_path / "bad.counts").write_bytes(bytes(data))
    with pytest.raises(StylePackError, match="checksum mismatch"):
        merge_shards([str(tmp_path / "bad.counts")], str(tmp_path / "x"))
    train_to_file(str(tmp_path / "p.stylepack"), tiny_tokenizer_dir, small_corpora[:1], progress=False)
    with pytest.raises(StylePackError, match="not a count shard"):
        merge_shards([str(tmp_path / "p.stylepack")], str(tmp_path / "x"))
    with pytest.raises(StylePackError, match="count shard not found"):
        merge_shards([str(tmp_path / "none.counts")], str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_an_interrupted_run_leaves_no_half_written_pack(tiny_tokenizer_dir, small_corpora, tmp_path, monkeypatch, interrupt):
    out = tmp_path / "style.stylepack"
    out.write_bytes(b"the previous pack")
    spill = tmp_path / "spill"
    spill.mkdir()
    real_sink = pack_writer._OrderSink

    class FailingSink(real_sink):
        def __call__(self, *piece):
            super().__call__(*piece)
            raise interrupt("stopped while writing")

    monkeypatch.setattr(pack_writer, "_OrderSink", FailingSink)
    with pytest.raises(interrupt):
        train_to_file(str(out), tiny_tokenizer_dir, small_corpora, progress=False, memory=TINY_BUDGET,
                      spill_dir=str(spill))
    assert out.read_bytes() == b"the previous pack"  # untouched: nothing was renamed over it
    assert sorted(os.listdir(tmp_path)) == ["spill", "style.stylepack"] and os.listdir(spill) == []


def test_parse_memory():
    assert parse_memory("2G") == 2 << 30 and parse_memory("512m") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("800MB") == 800 << 20 and parse_memory(12345) == 12345 and parse_memory(None) is None
    for bad in ("lots", "-1G", "0", 0):
        with pytest.raises(StylePackError, match="memory budget"):
            parse_memory(bad)
