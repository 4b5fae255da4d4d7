"""The style pack: counts of one corpus, in safetensors, with validated JSON metadata.

Counts (not deltas) are stored, so that every steering mode derives its deltas at load time.
Layout of the tensors, for each order n in 1..orders:
  order{n}.context_tokens  [C_n, n-1] int32   (absent for n = 1: one empty context)
  order{n}.context_total   [C_n] int64
  order{n}.context_offsets [C_n + 1] int64
  order{n}.entry_tokens    [E_n] int32
  order{n}.entry_counts    [E_n] int64
  unigram_counts           [V] int64           (untruncated; used by evaluation metrics)
Optionally, a backoff model (Kneser-Ney from training, or an imported ARPA file): the tensors
backoff{n}.* and the metadata key "backoff" (see backoff.py). Packs without one load as before.
Metadata (the safetensors header's "ngram_style" key) is JSON; see ``StylePack.metadata``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .counting import MAX_ORDER, OrderTable, check_sparse_order
from .errors import StylePackError

FORMAT_NAME = "vllm-ngram-style-pack"
FORMAT_VERSION = 1
METADATA_KEY = "ngram_style"
DEFAULT_SMOOTHING_K = 1e-3
DEFAULT_TOP_K = 512
PAPER_WEIGHTS = (0.1, 0.3, 0.6)


def default_weights(orders: int) -> list[float]:
    """The paper's (0.1, 0.3, 0.6) for 3 orders; for others, weights growing as n^2, summing to 1."""
    if orders == 3:
        return list(PAPER_WEIGHTS)
    raw = [float(n * n) for n in range(1, orders + 1)]
    return [w / sum(raw) for w in raw]


@dataclass
class StylePack:
    tables: list[OrderTable]  # index n-1 holds order n
    unigram_counts: np.ndarray  # [V] int64
    vocab_size: int
    tokenizer_fingerprint: str
    smoothing_k: float = DEFAULT_SMOOTHING_K
    top_k: int = DEFAULT_TOP_K
    weights: list[float] = field(default_factory=lambda: list(PAPER_WEIGHTS))
    corpus: dict = field(default_factory=dict)
    name: str = ""
    backoff: "BackoffModel | None" = None  # optional; backoff.BackoffModel (mode "kn")

    @property
    def orders(self) -> int:
        return len(self.tables)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"unigram_counts": self.unigram_counts.astype(np.int64)}
        for t in self.tables:
            p = f"order{t.order}."
            if t.order > 1:
                out[p + "context_tokens"] = t.context_tokens.astype(np.int32)
            out[p + "context_total"] = t.context_total.astype(np.int64)
            out[p + "context_offsets"] = t.context_offsets.astype(np.int64)
            out[p + "entry_tokens"] = t.entry_tokens.astype(np.int32)
            out[p + "entry_counts"] = t.entry_counts.astype(np.int64)
        if self.backoff is not None:
            out.update(self.backoff.tensors())
        return out

    def metadata(self) -> dict:
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "tokenizer": {"fingerprint": self.tokenizer_fingerprint, "vocab_size": self.vocab_size},
            "orders": self.orders,
            "smoothing_k": self.smoothing_k,
            "top_k": self.top_k,
            "weights": list(self.weights),
            "distinct_ngrams": [t.distinct_ngrams for t in self.tables],
            "corpus": self.corpus,
        }
        if self.backoff is not None:  # absent otherwise, so older packs keep their checksums
            meta["backoff"] = self.backoff.metadata()
        return meta

    def check_tokenizer(self, fingerprint: str, vocab_size: int | None = None, where: str = "") -> None:
        """Raise unless this pack was counted with the tokenizer described."""
        where = f" of {where}" if where else ""
        if fingerprint != self.tokenizer_fingerprint:
            raise StylePackError(
                f"style pack {self.name!r} was trained with another tokenizer (fingerprint "
                f"{self.tokenizer_fingerprint[:12]}...) than the tokenizer{where} ({fingerprint[:12]}...); "
                "retrain it with this model's tokenizer")
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise StylePackError(
                f"style pack {self.name!r} has vocabulary size {self.vocab_size}, the tokenizer{where} has {vocab_size}")


def _checksum(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_pack(pack: StylePack, path: str) -> None:
    from safetensors.numpy import save_file

    tensors = pack.tensors()
    meta = pack.metadata()
    meta["checksum"] = _checksum(tensors, meta)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)})
    os.replace(tmp, path)  # never leave a half-written pack under the real name


def _fail(path: str, why: str) -> StylePackError:
    return StylePackError(f"style pack {path!r}: {why}")


def load_pack(path: str) -> StylePack:
    """Load and fully validate a style pack. Every failure is a StylePackError naming the problem."""
    from safetensors import safe_open

    if not os.path.exists(path):
        raise StylePackError(f"style pack not found: {path!r}")
    if os.path.isdir(path):
        raise _fail(path, "is a folder, not a .stylepack file")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises SafetensorError / OSError on bad bytes
        raise _fail(path, f"corrupt or truncated file (not readable as safetensors: {exc})") from exc
    if METADATA_KEY not in header:
        raise _fail(path, "not a style pack (no ngram_style metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise _fail(path, f"corrupt metadata JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _fail(path, "not a style pack (wrong format name)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.get('format_version')!r} is not supported "
                          f"(this build reads version {FORMAT_VERSION}); retrain or upgrade vllm-ngram-style")
    stored = meta.pop("checksum", None)
    if stored != _checksum(tensors, meta):
        raise _fail(path, "checksum mismatch: the file is corrupt or was modified")
    try:
        orders = int(meta["orders"])
        vocab = int(meta["tokenizer"]["vocab_size"])
        weights = [float(w) for w in meta["weights"]]
        if not 1 <= orders <= MAX_ORDER or len(weights) != orders:
            raise ValueError(f"orders={orders}, {len(weights)} weights")
        tables = []
        for n in range(1, orders + 1):
            p = f"order{n}."
            ctx = tensors[p + "context_tokens"] if n > 1 else np.zeros((1, 0), np.int32)
            t = OrderTable(n, ctx, tensors[p + "context_total"], tensors[p + "context_offsets"],
                           tensors[p + "entry_tokens"], tensors[p + "entry_counts"],
                           int(meta["distinct_ngrams"][n - 1]))
            _check_table(t, vocab)
            tables.append(t)
        unigram = tensors["unigram_counts"]
        if unigram.shape != (vocab,):
            raise ValueError("unigram_counts has the wrong shape")
        backoff = None
        if "backoff" in meta:
            from .backoff import BackoffModel

            backoff = BackoffModel.from_tensors(tensors, meta["backoff"], vocab)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise _fail(path, f"inconsistent contents ({exc})") from exc
    return StylePack(tables, unigram, vocab, meta["tokenizer"]["fingerprint"], float(meta["smoothing_k"]),
                     int(meta["top_k"]), weights, meta.get("corpus", {}), meta.get("name", ""), backoff)


def _check_table(t: OrderTable, vocab: int) -> None:
    check_sparse_order(f"order {t.order}", t.order, t.context_total.shape[0], t.context_tokens,
                       t.context_offsets, (t.entry_counts,), t.entry_tokens, vocab)
