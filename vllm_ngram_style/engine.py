"""Engine-side start-up and per-request parsing, shared by both vLLM adapters.

build_core: configuration -> packs (fully validated) -> tokenizer check -> compiled SteeringCore.
parse_in_engine: a request's extras, parsed where an exception would kill the engine.
"""
from __future__ import annotations

import logging

from . import server_config
from .errors import ConfigError, RequestError
from .request_args import StyleRequest, parse_request_args
from .steering_core import SteeringCore

logger = logging.getLogger(__name__)


def build_core(vllm_config, device, backend: str | None = None):
    """-> (SteeringCore, StyleConfig). Raises ConfigError with a message saying what to fix."""
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError("vllm-ngram-style does not support speculative decoding: steering must see every "
                          "committed token. Remove the speculative decoding options or the style processor.")
    cfg = server_config.config_from_vllm_config(vllm_config)
    fp, vocab = server_config.served_tokenizer_identity(vllm_config)
    packs = server_config.load_packs(cfg, fp, vocab)
    try:
        core = SteeringCore(packs, cfg.modes, device, backend)
    except ValueError as exc:  # an unknown mode in the configuration
        raise ConfigError(f"ngram_style modes {list(cfg.modes)}: {exc}") from exc
    server_config.register_active(cfg)
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
    return None if req is None or req.strength == 0.0 else req  # strength 0 is exactly unsteered
