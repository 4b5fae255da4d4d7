"""validate_params in vLLM's API process: a request's style extras against the server's styles.

vLLM calls the classmethod ``validate_params(params)`` at admission and passes no configuration,
so the configuration is found, in this order:
1. the file named by NGRAM_STYLE_CONFIG: ``vllm-ngram-style serve`` writes the resolved
   configuration there and sets the variable for the vLLM process it starts (explicit);
2. fallback, for vLLM started by hand or the offline ``LLM`` API: the additional_config of the
   vLLM InputProcessor that is calling us (``config_of_calling_input_processor``; a test reads
   vLLM's source and fails when the attribute it relies on moves);
3. the configuration of a processor built in this process (an in-process engine).
Import-light: json, os, sys and time only (no torch, no packs).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

from .config import DRAINING_KEY, ENV_CONFIG, SECTION, StyleConfig, read_config
from .errors import RequestError
from .settings import getenv
from .request_args import StyleRequest, is_style_key, parse_request_args

_active: list[StyleConfig] = []  # configurations of processors built in this process
_cache: dict[str, object] = {}  # StyleConfig | None per configuration; {name: until} per draining list


def register_active(cfg: StyleConfig) -> None:
    """Called when a processor is built, so validation in the same process sees its config."""
    _active.append(cfg)


def config_of_calling_input_processor(max_depth: int = 12) -> tuple[bool, Mapping | None]:
    """The additional_config of the vLLM InputProcessor (it holds ``self.vllm_config``) on the call
    stack above validate_params. -> (found, additional_config). The only stack walk in the package."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        cfg = getattr(owner, "vllm_config", None) if owner is not None else None
        if cfg is not None and hasattr(cfg, "additional_config"):
            return True, cfg.additional_config
        frame = frame.f_back
    return False, None


def config_for_validation() -> StyleConfig | None:
    """Light lookup of the serving configuration (no packs are loaded); see the module docstring."""
    env_path = getenv("CONFIG")
    if env_path:
        try:  # keyed on the file's mtime too: an operator may rewrite it while the server runs
            stamp = os.stat(env_path).st_mtime_ns
        except OSError:
            stamp = -1  # read_config raises the precise error
        key = f"env|{env_path}|{stamp}"
        if key not in _cache:
            _cache[key] = read_config(None)
        return _cache[key]
    found, additional = config_of_calling_input_processor()
    if not found:
        return _active[-1] if _active else None
    section = additional.get(SECTION) if isinstance(additional, Mapping) else None
    key = json.dumps(section, sort_keys=True, default=str)
    if key not in _cache:
        _cache[key] = read_config({SECTION: section} if section is not None else None)
    return _cache[key]


def draining_names() -> list[str]:
    """Styles just removed by a live update that the engine still serves (their grace time, from the
    resolved file's DRAINING_KEY entry; live.write_resolved). Empty without a configuration file."""
    env_path = getenv("CONFIG")
    if not env_path:
        return []
    try:
        stamp = os.stat(env_path).st_mtime_ns
    except OSError:
        return []
    key = f"draining|{env_path}|{stamp}"
    if key not in _cache:
        try:
            with open(env_path, encoding="utf-8") as f:
                data = json.load(f)
            entry = data.get(DRAINING_KEY) if isinstance(data, Mapping) else None
            _cache[key] = {str(n): float(t) for n, t in entry.items()} if isinstance(entry, Mapping) else {}
        except (OSError, ValueError, TypeError):
            _cache[key] = {}
    now = time.time()
    return sorted(n for n, until in _cache[key].items() if until > now)


def validate_sampling_params(params) -> StyleRequest | None:
    """validate_params of the processor classes. -> StyleRequest or None (unsteered). Raises RequestError."""
    extra = getattr(params, "extra_args", None)
    if not extra or not any(is_style_key(k) for k in extra):
        return None  # unsteered requests never need the configuration
    cfg = config_for_validation()
    if cfg is None:
        raise RequestError("style steering is not configured on this server (no styles); the operator "
                           f"must configure {SECTION} styles")
    names = cfg.names
    draining = draining_names()  # see live.write_resolved: the middleware already refused new requests for these
    if draining:
        names = sorted(set(names) | set(draining))
    return parse_request_args(extra, names, cfg.modes)
