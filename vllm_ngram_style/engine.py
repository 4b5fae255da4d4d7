"""Engine glue: from a vLLM configuration to a ready SteeringCore, and per-request parsing.

load_styles is the one sequence that turns a StyleConfig into checked packs: modes known, every
pack opened and validated (fast: a missing or corrupt pack fails in well under a second), then the
served tokenizer fingerprinted (slow) and every pack checked against it. ``vllm-ngram-style
serve`` runs it before vLLM starts; the engine runs it again when it builds the processor.
"""
from __future__ import annotations

import logging
import os

from .config import StyleConfig, config_from_vllm_config
from .errors import ConfigError, RequestError, StylePackError
from .request_args import StyleRequest, parse_request_args
from .validation import register_active

logger = logging.getLogger(__name__)


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


def load_styles(cfg: StyleConfig, tokenizer: str | None, revision: str | None = None,
                trust_remote_code: bool = False, where: str | None = None) -> dict:
    """Check the modes, load every configured pack (fully validated), then check each against the
    tokenizer (None: skip that check). -> {name: StylePack}. Errors name the style and its pack."""
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
    where = where or f"model {tokenizer!r}"
    for name, pack in packs.items():
        try:
            pack.check_tokenizer(fp, vocab, where)
        except StylePackError as exc:
            raise ConfigError(f"style {name!r}: {exc} (pack file: {cfg.styles[name]})") from exc
    return packs


def build_core(vllm_config, device, backend: str | None = None):
    """-> (SteeringCore, StyleConfig). Raises ConfigError with a message saying what to fix."""
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError("vllm-ngram-style does not support speculative decoding: steering must see every "
                          "committed token. Remove the speculative decoding options or the style processor.")
    cfg = config_from_vllm_config(vllm_config)
    mc = vllm_config.model_config
    packs = load_styles(cfg, mc.tokenizer or mc.model, getattr(mc, "tokenizer_revision", None),
                        bool(getattr(mc, "trust_remote_code", False)), where="the served model")
    from .steering_core import SteeringCore  # here, not at the top: serve's pack checks must not wait for torch

    core = SteeringCore(packs, cfg.modes, device, backend)
    register_active(cfg)
    logger.info("vllm-ngram-style: styles %s; modes %s; %s op on %s", ", ".join(core.styles),
                ", ".join(core.modes), core.backend, core.device)
    return core, cfg


def parse_in_engine(params, cfg) -> StyleRequest | None:
    """Requests were validated at admission, so a failure here means a caller bypassed validation:
    log it and leave that request unsteered (an exception here would kill the engine)."""
    try:
        req = parse_request_args(getattr(params, "extra_args", None), cfg.names, cfg.modes)
    except RequestError as exc:
        logger.error("vllm-ngram-style: unvalidated bad style arguments, request left unsteered: %s", exc)
        return None
    return None if req is None or req.total_strength == 0.0 else req  # strength 0 is exactly unsteered
