"""ARPA import/export: the backoff semantics against a naive evaluator of the file's text, the KN
exporter's round trip, the CLI, and clear errors for malformed files."""
import gzip
import math

import numpy as np
import pytest
import torch

from test_kneser_ney import check_compiled_equals_dense, context_tensor, random_docs, random_histories
from vllm_ngram_style.arpa import arpa_to_pack, read_arpa, write_arpa
from vllm_ngram_style.errors import StylePackError
from vllm_ngram_style.kneser_ney import estimate_kneser_ney
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.pack import load_pack, save_pack
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.train import count_full

# Not normalised on purpose: the backoff recursion is defined all the same. <s> contexts, a </s>
# target, a positive backoff, a context without a backoff field, a trigram whose context bigram is
# missing ("2 3 0"), a trigram whose suffix bigram is missing ("1 0 4"), and id 5 never listed.
HANDWRITTEN = """some free text before the header is allowed

\\data\\
ngram 1=8
ngram 2=6
ngram 3=4

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.3
-0.8\t</s>
-0.5\t0\t-0.2
-0.6\t1\t-0.25
-0.7\t2
-0.9\t3\t-0.1
-1.1\t4\t0.05

\\2-grams:
-0.3\t<s> 0\t-0.1
-0.4\t0 1\t-0.15
-0.2\t0 2
-0.35\t1 0\t0.1
-0.6\t3 </s>
-0.5\t4 4

\\3-grams:
-0.1\t<s> 0 1
-0.2\t0 1 3
-0.25\t1 0 4
-0.45\t2 3 0

\\end\\
"""


def naive_arpa(text):
    """{words tuple: (log10 p, log10 backoff)} parsed with plain string handling."""
    entries, order = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:line.index("-")])
            continue
        if order is None or not line or line.startswith("\\"):
            continue
        f = line.split()
        entries[tuple(f[1:order + 1])] = (float(f[0]), float(f[order + 1]) if len(f) > order + 1 else 0.0)
    return entries


def naive_logprob(entries, max_order, history, t):
    """The standard ARPA backoff definition; an unlisted id is <unk>."""
    def q(ctx, w):
        g = ctx + (w,)
        if g in entries:
            return entries[g][0]
        if not ctx:
            return entries[("<unk>",)][0]
        return entries.get(ctx, (0.0, 0.0))[1] + q(ctx[1:], w)
    h = tuple(str(x) for x in history)[max(0, len(history) - (max_order - 1)):]
    return q(h, str(t)) * math.log(10)


def write(tmp_path, text, name="m.arpa"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_handwritten_file_follows_backoff_semantics(tmp_path):
    vocab = 6
    model = read_arpa(write(tmp_path, HANDWRITTEN), vocab)
    assert model.kind == "arpa" and model.max_order == 3 and model.info["unk_floor"]
    assert model.info["dropped"] == {"bos_context": 2, "eos_target": 1, "unk_high_order": 0}
    entries = naive_arpa(HANDWRITTEN)
    hists = [[], [0], [1], [4], [5], [0, 1], [1, 0], [2, 3], [5, 0], [3, 3], [0, 5], [4, 4], [2, 3, 9][:2]]
    for h in hists:
        want = np.array([naive_logprob(entries, 3, h, t) for t in range(vocab)])
        np.testing.assert_allclose(model.dense_logprob(h), want, rtol=0, atol=1e-12)
    # compiled: equal to the dense log probabilities up to one constant per row
    compiled = model.compile("s")
    rows = len(hists)
    z = torch.zeros(rows, vocab, dtype=torch.float64)
    ReferenceSteering([compiled]).apply(z, torch.zeros(rows, dtype=torch.int64), torch.ones(rows, dtype=torch.float64),
                                        context_tensor(hists, 2))
    for r, h in enumerate(hists):
        diff = z[r].numpy() - model.dense_logprob(h)
        assert np.ptp(diff) < 1e-12, h


@pytest.mark.parametrize("top_k,orders", [(None, 3), (2, 3), (None, 5), (3, 4)])
def test_kn_export_reimports_to_the_same_model(tmp_path, top_k, orders):
    rng = np.random.default_rng(orders)
    vocab = 20
    docs = random_docs(rng, 100, vocab, used=16)
    _, counts = count_full(docs, vocab, orders)
    model = estimate_kneser_ney(counts, vocab, top_k=top_k)
    path = str(tmp_path / "kn.arpa")
    write_arpa(model, path)
    back = read_arpa(path, vocab)
    for h in random_histories(rng, docs, 24, orders, vocab):
        np.testing.assert_allclose(back.dense_logprob(h), model.dense_logprob(h), rtol=0, atol=1e-12)
        if top_k is None:
            assert abs(np.exp(back.dense_logprob(h)).sum() - 1) < 1e-12
    check_compiled_equals_dense(model, back.compile("s"), docs, rng)
    # every line's words are ids or specials, and the file is the naive evaluator's model too
    entries = naive_arpa(open(path).read())
    h = [int(x) for x in docs[0][:orders - 1]]
    want = np.array([naive_logprob(entries, orders, h, t) for t in range(vocab)])
    np.testing.assert_allclose(model.dense_logprob(h), want, rtol=0, atol=1e-12)


def test_rounded_and_gzipped_export(tmp_path):
    rng = np.random.default_rng(3)
    vocab = 15
    docs = random_docs(rng, 80, vocab)
    _, counts = count_full(docs, vocab, 3)
    model = estimate_kneser_ney(counts, vocab)
    path = str(tmp_path / "kn.arpa.gz")
    write_arpa(model, path, precision=7)
    with gzip.open(path, "rt") as f:
        assert f.readline() == "\\data\\\n"
    back = read_arpa(path, vocab)
    for h in ([], [1], [1, 2]):
        np.testing.assert_allclose(back.dense_logprob(h), model.dense_logprob(h), rtol=0, atol=1e-5)


def test_missing_unk_uses_the_smallest_unigram(tmp_path):
    text = "\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\t0\n-0.9\t1\n\n\\end\\\n"
    model = read_arpa(write(tmp_path, text), 4)
    assert not model.info["unk_floor"]
    np.testing.assert_allclose(model.dense_logprob([]), np.array([-0.3, -0.9, -0.9, -0.9]) * math.log(10))


def test_unk_in_higher_orders_is_dropped(tmp_path):
    text = ("\\data\\\nngram 1=3\nngram 2=2\n\n\\1-grams:\n-1\t<unk>\n-0.3\t0\t-0.1\n-0.5\t1\n\n"
            "\\2-grams:\n-0.2\t0 <unk>\n-0.1\t0 1\n\n\\end\\\n")
    model = read_arpa(write(tmp_path, text), 3)
    assert model.info["dropped"]["unk_high_order"] == 1
    np.testing.assert_allclose(model.dense_logprob([0]), np.array([-0.1 - 0.3, -0.1, -0.1 - 1]) * math.log(10))


GOOD_HEAD = "\\data\\\nngram 1=2\n\n\\1-grams:\n"
MALFORMED = [
    ("hello world\n", "no \\\\data\\\\ header"),
    ("\\data\\\nngram x=3\n", "malformed count line"),
    ("\\data\\\nngram 2=3\n", "orders 1, 2"),
    ("\\data\\\n\n\\1-grams:\n", "no 'ngram N=COUNT'"),
    ("\\data\\\n" + "".join(f"ngram {n}=1\n" for n in range(1, 8)), "above the supported maximum of 6"),
    ("\\data\\\nngram 1=2\n\n\\2-grams:\n", "expected the \\\\1-grams: section"),
    (GOOD_HEAD + "-1\t<unk>\n\n\\end\\\n", "ends after 1 lines; the header declares 2"),
    (GOOD_HEAD + "-1\t<unk>\n-1\t0\n-1\t1\n\n\\end\\\n", "more lines than the 2 declared"),
    (GOOD_HEAD + "-1\t<unk>\nabc\t0\n\n\\end\\\n", "'abc' is not a number"),
    (GOOD_HEAD + "-1\t<unk>\nnan\t0\n\n\\end\\\n", "not finite"),
    (GOOD_HEAD + "-1\t<unk>\n-1\t0\tx\n\n\\end\\\n", "backoff 'x' is not a number"),
    (GOOD_HEAD + "-1\t<unk>\n-1\tfoo\n\n\\end\\\n", "unknown token 'foo'"),
    (GOOD_HEAD + "-1\t<unk>\n-1\t99\n\n\\end\\\n", "token id 99 is outside"),
    (GOOD_HEAD + "-1\t<unk>\n-1\t0 1 2\n\n\\end\\\n", "needs 2 or 3 fields, found 4"),
    (GOOD_HEAD + "-1\t0\n-1\t0\n\n\\end\\\n", "duplicate 1-grams"),
    (GOOD_HEAD + "-1\t<unk>\n-1\t0\n", "expected \\\\end\\\\, found end of file"),
    (GOOD_HEAD + "-1\t<unk>\n-99\t<s>\n\n\\end\\\n", "no unigram is a token id"),
]


@pytest.mark.parametrize("text,match", MALFORMED)
def test_malformed_files_are_rejected_clearly(tmp_path, text, match):
    with pytest.raises(StylePackError, match=match):
        read_arpa(write(tmp_path, text), 10)


def test_unreadable_path(tmp_path):
    with pytest.raises(StylePackError, match="cannot read ARPA file"):
        read_arpa(str(tmp_path / "absent.arpa"), 10)


def test_line_numbers_in_errors(tmp_path):
    with pytest.raises(StylePackError, match=r"line 6: unknown token"):
        read_arpa(write(tmp_path, GOOD_HEAD + "-1\t<unk>\n-1\tfoo\n\n\\end\\\n"), 10)


def test_pack_and_cli(tmp_path, tiny_tokenizer_dir, capsys):
    from vllm_ngram_style.cli import main
    from vllm_ngram_style.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size

    tok = load_tokenizer(tiny_tokenizer_dir)
    vocab, fp = tokenizer_vocab_size(tok), tokenizer_fingerprint(tok)
    arpa = write(tmp_path, HANDWRITTEN)
    out = str(tmp_path / "hand.stylepack")
    assert main(["import-arpa", arpa, "--tokenizer", tiny_tokenizer_dir, "--out", out, "--name", "hand"]) == 0
    assert "use mode 'kn'" in capsys.readouterr().out
    pack = load_pack(out)
    pack.check_tokenizer(fp, vocab)
    assert pack.name == "hand" and pack.backoff.kind == "arpa" and pack.vocab_size == vocab
    direct = read_arpa(arpa, vocab)
    for h in ([], [0, 1], [1, 0], [7, 7]):
        np.testing.assert_array_equal(pack.backoff.dense_logprob(h), direct.dense_logprob(h))
    kn = compile_style(pack, "kn")
    assert kn.num_entries == direct.compile("x").num_entries > 0
    assert compile_style(pack, "exact").num_entries == 0  # no counts in an imported pack
    # truncation and a bad file through the CLI
    pack2 = arpa_to_pack(arpa, vocab, fp, top_k=1)
    assert max(np.diff(o.context_offsets).max() for o in pack2.backoff.orders[1:]) == 1
    save_pack(pack2, str(tmp_path / "cut.stylepack"))
    bad = write(tmp_path, "nothing here\n", "bad.arpa")
    assert main(["import-arpa", bad, "--tokenizer", tiny_tokenizer_dir, "--out", str(tmp_path / "x.stylepack")]) == 2
    assert "no \\data\\ header" in capsys.readouterr().err
