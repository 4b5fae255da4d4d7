"""Engine glue: from a vLLM configuration to a ready SteeringCore (packs loaded and checked by
styles.load_styles, the live-update watcher when serve asked for one), and per-request parsing."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .config import StyleConfig, config_from_vllm_config
from .errors import ConfigError, RequestError
from .styles import load_styles
from .request_args import StyleRequest, parse_request_args
from .settings import getenv
from .validation import register_active

logger = logging.getLogger(__name__)


@dataclass
class EngineStyles:
    """What a processor runs with: the core, the configuration it parses requests against, and the
    live-update watcher (None unless ``serve --style-config`` asked for live styles)."""

    core: object  # SteeringCore
    cfg: StyleConfig
    live: object = None  # live.LiveStyles


def build_core(vllm_config, device, backend: str | None = None) -> EngineStyles:
    """Raises ConfigError with a message saying what to fix."""
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError("vllm-ngram-style does not support speculative decoding: steering must see every "
                          "committed token. Remove the speculative decoding options or the style processor.")
    cfg = config_from_vllm_config(vllm_config)
    mc = vllm_config.model_config
    identity: list = []
    packs = load_styles(cfg, mc.tokenizer or mc.model, getattr(mc, "tokenizer_revision", None),
                        bool(getattr(mc, "trust_remote_code", False)), where="the served model", identity=identity)
    from .steering_core import SteeringCore  # here, not at the top: serve's pack checks must not wait for torch

    core = SteeringCore(packs, cfg.modes, device, backend)
    register_active(cfg)
    logger.info("vllm-ngram-style: styles %s; modes %s; %s op on %s", ", ".join(core.styles),
                ", ".join(core.modes), core.backend, core.device)
    return EngineStyles(core, cfg, _live_styles(vllm_config, cfg, packs, tuple(identity), core, device, backend))


def _live_styles(vllm_config, cfg, packs, identity, core, device, backend):
    """The live-update watcher, when the resolved configuration asks for one (serve --style-config)."""
    from .live import LiveStyles, live_spec

    spec, publish = live_spec(getenv("CONFIG"))
    if spec is None:
        return None
    pc = getattr(vllm_config, "parallel_config", None)
    if getattr(pc, "world_size", 1) > 1:
        logger.warning("vllm-ngram-style: live style updates are off with tensor or pipeline parallelism "
                       "(a processor per rank); restart the server to change styles")
        return None
    logger.info("vllm-ngram-style: watching %s for style updates", spec.get("config_file"))
    return LiveStyles(spec, publish, cfg, packs, identity, core, device, backend)


_PARSED: dict = {}  # (typed extra items, names, modes) -> StyleRequest | None
_PARSED_MAX = 1024


def _parse_cached(extra, names, modes):
    """parse_request_args, memoised: a server's requests repeat a few argument sets, and parsing costs
    ~30 us per request, a visible share of a small model's step. The key holds each value's type
    (1, 1.0 and True hash alike but need not parse alike); unhashable values (lists) are not cached;
    errors are never cached."""
    if not extra:
        return parse_request_args(extra, names, modes)
    try:
        key = (tuple(sorted((k, type(v).__name__, v) for k, v in extra.items())), tuple(names), tuple(modes))
        hash(key)
    except TypeError:
        return parse_request_args(extra, names, modes)
    hit = _PARSED.get(key, _PARSED)
    if hit is not _PARSED:
        return hit
    req = parse_request_args(extra, names, modes)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[key] = req
    return req


def parse_in_engine(params, cfg) -> StyleRequest | None:
    """Requests were validated at admission, so a failure here means a caller bypassed validation:
    log it and leave that request unsteered (an exception here would kill the engine)."""
    try:
        req = _parse_cached(getattr(params, "extra_args", None), cfg.names, cfg.modes)
    except RequestError as exc:
        logger.error("vllm-ngram-style: unvalidated bad style arguments, request left unsteered: %s", exc)
        return None
    return None if req is None or req.total_strength == 0.0 else req  # strength 0 is exactly unsteered
