"""Loading the serving model's tokenizer and fingerprinting it.

A style pack is only meaningful for the exact vocabulary it was counted with, so packs record a
fingerprint of the tokenizer (vocabulary, merges, added tokens) and refuse to load elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os

from .errors import StylePackError


def load_tokenizer(model_dir: str):
    """Return the HF *fast* tokenizer stored in ``model_dir`` (a local folder; nothing is downloaded)."""
    if not os.path.isdir(model_dir):
        raise StylePackError(f"tokenizer folder not found: {model_dir!r} (give a local model folder)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except Exception as exc:  # transformers raises many types here
        raise StylePackError(f"cannot load a tokenizer from {model_dir!r}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise StylePackError(f"tokenizer in {model_dir!r} is not a fast (tokenizers-backed) tokenizer")
    return tok


def tokenizer_fingerprint(tok) -> str:
    """sha256 over the tokenizer model (vocabulary and merges) and its added tokens.

    Normalisers and templates are left out on purpose: they do not change which id means which
    string, and that is all a pack depends on.
    """
    data = json.loads(tok.backend_tokenizer.to_str())
    added = sorted((a["id"], a["content"]) for a in data.get("added_tokens") or [])
    blob = json.dumps({"model": data["model"], "added": added}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def tokenizer_vocab_size(tok) -> int:
    """Number of ids the tokenizer can emit (base vocabulary plus added tokens)."""
    return len(tok)
