"""Loading the configured styles: every pack opened and validated, then checked against the served
tokenizer. The one sequence ``serve`` runs before vLLM starts, the engine runs when it builds the
processor, and live updates run for each new pack (live.py).

load_styles checks the modes, opens and validates every pack (fast: a missing or corrupt pack
fails in well under a second), then fingerprints the served tokenizer (slow) and checks every
pack against it.
"""
from __future__ import annotations

import os

from .config import StyleConfig
from .errors import ConfigError, StylePackError


def tokenizer_identity(name_or_dir: str, revision: str | None = None, trust_remote_code: bool = False):
    """(fingerprint, vocabulary size) of a model's tokenizer: a local folder, or a name already in
    the Hugging Face cache (nothing is downloaded when HF_HUB_OFFLINE=1)."""
    from .tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size

    if os.path.isdir(name_or_dir):
        tok = load_tokenizer(name_or_dir)
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name_or_dir, revision=revision, use_fast=True,
                                                trust_remote_code=trust_remote_code)
        except Exception as exc:  # transformers raises many types here
            raise ConfigError(f"cannot load the served model's tokenizer {name_or_dir[:200]!r}: {exc}") from exc
    return tokenizer_fingerprint(tok), tokenizer_vocab_size(tok)


def load_one_pack(name: str, path: str, tokenizer: tuple | None = None, where: str = "the served model"):
    """One style's pack, fully validated, and checked against tokenizer = (fingerprint, vocabulary
    size) when given. Errors are ConfigError naming the style and its pack file."""
    from .pack import load_pack

    try:
        pack = load_pack(path)
    except StylePackError as exc:
        raise ConfigError(f"style {name!r}: {exc}") from exc
    if tokenizer is not None:
        try:
            pack.check_tokenizer(tokenizer[0], tokenizer[1], where)
        except StylePackError as exc:
            raise ConfigError(f"style {name!r}: {exc} (pack file: {path})") from exc
    return pack


def load_styles(cfg: StyleConfig, tokenizer: str | None, revision: str | None = None,
                trust_remote_code: bool = False, where: str | None = None, identity: list | None = None) -> dict:
    """Check the modes, load every configured pack (fully validated), then check each against the
    tokenizer (None: skip that check). -> {name: StylePack}. Errors name the style and its pack.
    identity: a list to receive the tokenizer's (fingerprint, vocabulary size)."""
    from .modes import available_modes
    from .pack import load_pack

    unknown = [m for m in cfg.modes if m not in available_modes()]
    if unknown:
        raise ConfigError(f"ngram_style modes {list(cfg.modes)}: unknown style mode {unknown[0]!r} (unknown "
                          f"mode{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; available: "
                          f"{', '.join(available_modes())})")
    packs = {}
    for name in cfg.names:  # before the tokenizer: a bad pack is reported without waiting for it
        try:
            packs[name] = load_pack(cfg.styles[name])
        except StylePackError as exc:
            raise ConfigError(f"style {name!r}: {exc}") from exc
    if tokenizer is None:
        return packs
    fp, vocab = tokenizer_identity(tokenizer, revision, trust_remote_code)
    if identity is not None:
        identity[:] = [fp, vocab]
    where = where or f"model {tokenizer!r}"
    for name, pack in packs.items():
        try:
            pack.check_tokenizer(fp, vocab, where)
        except StylePackError as exc:
            raise ConfigError(f"style {name!r}: {exc} (pack file: {cfg.styles[name]})") from exc
    return packs
