"""The deterministic train / held-out document split (corpus_split.py) and `train|count --part`."""
import pytest

from vllm_ngram_style.cli import main as cli_main
from vllm_ngram_style.corpus_reader import CorpusReader
from vllm_ngram_style.corpus_split import (BLOCK_DOCS, HELDOUT_FRACTION, PartReader, document_part,
                                           pack_part, select_part)
from vllm_ngram_style.errors import CorpusError, StylePackError
from vllm_ngram_style.merging import merge_shards
from vllm_ngram_style.pack import load_pack
from vllm_ngram_style.tokenizer import load_tokenizer
from vllm_ngram_style.train import count_to_shard, train_pack, train_to_file


@pytest.mark.parametrize("n_docs", [1000, 1234, 61])
def test_parts_are_disjoint_cover_the_corpus_and_are_deterministic(n_docs):
    docs = [f"d{i}" for i in range(n_docs)]
    train, held = list(select_part(docs, "train")), list(select_part(docs, "heldout"))
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(docs)
    assert list(select_part(iter(docs), "all")) == docs
    # a generator (total unknown) gives the same parts as a list, run after run
    assert list(select_part((d for d in docs), "heldout")) == held == list(select_part(docs, "heldout"))
    assert train == [d for d in docs if d not in set(held)]  # order kept
    if n_docs == 1000:  # whole cycles of 10 blocks: exactly 30%
        assert len(held) == 300
    elif n_docs == 1234:
        assert abs(len(held) / n_docs - HELDOUT_FRACTION) < 0.05
    else:  # 61 documents: only the first document of block 3 is held out
        assert held == ["d60"]


def test_held_out_documents_come_in_contiguous_blocks():
    parts = [document_part(i) for i in range(400)]
    assert parts[:3 * BLOCK_DOCS] == ["train"] * (3 * BLOCK_DOCS)
    assert parts[3 * BLOCK_DOCS:4 * BLOCK_DOCS] == ["heldout"] * BLOCK_DOCS
    assert parts[200 + 3 * BLOCK_DOCS] == "heldout"  # the next cycle of 10 blocks
    with pytest.raises(CorpusError, match="unknown corpus part 'test'"):
        list(select_part(["x"], "test"))


def test_part_reader_streams_the_readers_documents(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"line {i}" for i in range(150)) + "\n")
    reader = CorpusReader([str(path)], split="line")
    held = list(PartReader(reader, "heldout"))
    assert held == [f"line {i}" for i in range(60, 80)] + [f"line {i}" for i in range(120, 140)]
    assert PartReader(reader, "train").total_bytes == reader.total_bytes  # progress is the whole reader's


def _stored_ngrams(pack) -> set:
    """Every (n-gram tuple) stored in a pack's tables, orders 1..N."""
    out = set()
    for t in pack.tables:
        for c in range(t.context_total.shape[0]):
            ctx = tuple(int(x) for x in t.context_tokens[c]) if t.order > 1 else ()
            for e in range(int(t.context_offsets[c]), int(t.context_offsets[c + 1])):
                out.add(ctx + (int(t.entry_tokens[e]),))
    return out


def _ngrams(tok, docs, orders) -> set:
    out = set()
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        for n in range(1, orders + 1):
            out |= {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}
    return out


def test_a_pack_of_the_train_part_never_counts_a_held_out_only_ngram(tiny_tokenizer_dir, tmp_path):
    # train documents from one vocabulary, held-out ones from another: many n-grams occur only held out
    train_words = "the knight said to sancho of the road and the horse".split()
    held_words = "science theory result data model method market price government report".split()
    docs = []
    for i in range(130):
        words = train_words if document_part(i) == "train" else held_words
        docs.append(" ".join(words[(i + j) % len(words)] for j in range(6)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(docs) + "\n")
    tok = load_tokenizer(tiny_tokenizer_dir)
    train_docs = [d for i, d in enumerate(docs) if document_part(i) == "train"]
    held_docs = [d for i, d in enumerate(docs) if document_part(i) == "heldout"]
    held_only = _ngrams(tok, held_docs, 3) - _ngrams(tok, train_docs, 3)
    assert len(held_only) > 20  # the test can fail: there is something to leak

    kw = dict(orders=3, top_k=512, split="line", progress=False)
    packs = {part: train_pack(tiny_tokenizer_dir, [str(corpus)], part=part, **kw)[0]
             for part in ("all", "train", "heldout")}
    assert not _stored_ngrams(packs["train"]) & held_only
    assert held_only <= _stored_ngrams(packs["all"]) and held_only <= _stored_ngrams(packs["heldout"])
    # exactly the counts of a corpus holding only the training documents
    only_train = tmp_path / "train_only.txt"
    only_train.write_text("\n".join(train_docs) + "\n")
    want = train_pack(tiny_tokenizer_dir, [str(only_train)], **kw)[0].tensors()
    got = packs["train"].tensors()
    assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
    assert packs["train"].corpus["documents"] == len(train_docs) == 100
    assert packs["heldout"].corpus["documents"] == len(held_docs) == 30
    assert [pack_part(p.corpus) for p in packs.values()] == ["all", "train", "heldout"]
    assert "part" not in packs["all"].corpus  # a whole-corpus pack's metadata is as before parts existed


def test_train_and_count_commands_record_the_part(tiny_tokenizer_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"the knight {'sancho ' * (i % 5)}said {i % 7}" for i in range(100)) + "\n")
    out = tmp_path / "h.stylepack"
    assert cli_main(["train", "--tokenizer", tiny_tokenizer_dir, "--corpus", str(corpus), "--split", "line",
                     "--part", "heldout", "--out", str(out), "--quiet"]) == 0
    pack = load_pack(str(out))  # written by the streaming pack writer
    assert pack.corpus["part"] == "heldout" and "blocks of 20" in pack.corpus["part_scheme"]
    assert pack.corpus["documents"] == 20
    # shards: the part is recorded and a train shard never merges with a held-out one
    a, b = str(tmp_path / "a.counts"), str(tmp_path / "b.counts")
    count_to_shard(a, tiny_tokenizer_dir, [str(corpus)], 3, split="line", progress=False, part="train")
    count_to_shard(b, tiny_tokenizer_dir, [str(corpus)], 3, split="line", progress=False, part="heldout")
    merge_shards([a], str(tmp_path / "m.stylepack"))
    assert load_pack(str(tmp_path / "m.stylepack")).corpus["part"] == "train"
    with pytest.raises(StylePackError, match="differ in part"):
        merge_shards([a, b], str(tmp_path / "x"))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one line only\n")
    with pytest.raises(CorpusError, match="held-out part begins at document 61"):
        train_to_file(str(tmp_path / "y"), tiny_tokenizer_dir, [str(tiny)], progress=False, part="heldout")
