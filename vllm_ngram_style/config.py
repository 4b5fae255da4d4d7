"""Server configuration: which styles (name -> style pack path) and modes a vLLM server offers.

The operator names styles; clients only ever name styles, never paths. Three sources, merged:

1. ``--additional-config '{"ngram_style": {"styles": {"quixote": "packs/quixote.stylepack"}}}'``
   (``vllm_config.additional_config["ngram_style"]``; relative paths are relative to the
   working directory);
2. a JSON file named by ``additional_config["ngram_style"]["config_file"]`` (relative pack paths
   are relative to the file's folder);
3. a JSON file named by the environment variable NGRAM_STYLE_CONFIG.

A section holds ``styles`` (object: name -> path), optionally ``modes`` (list; default
``["exact", "paper"]``) and, outside files, ``config_file``. A config file may hold the section
itself or ``{"ngram_style": {...}}``. The same style name given twice with different paths is an
error; ``modes`` is taken from the first source that sets it, in the order above.

Reading the configuration is light (json and os only): vLLM's API process does it to validate
requests (validation.py). Loading the packs and checking them against the served tokenizer is
separate (styles.load_styles), done by the engine and, earlier, by ``vllm-ngram-style serve``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError
from .settings import env_name, getenv

SECTION = "ngram_style"
# Top-level key of a resolved configuration file (written by live.write_resolved): {style name: wall-clock
# time (s) until which the engine still serves that just-removed style}. Not part of the section:
# read_config ignores it; only validate_params reads it (validation.draining_names).
DRAINING_KEY = "draining"
ENV_CONFIG = env_name("CONFIG")  # NGRAM_STYLE_CONFIG (settings.py)
DEFAULT_MODES = ("exact", "paper")
_SECTION_KEYS = ("styles", "modes", "config_file")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class StyleConfig:
    styles: dict  # name -> absolute path of its .stylepack
    modes: tuple  # mode names the server compiles and accepts

    @property
    def names(self) -> list[str]:
        return sorted(self.styles)


def _parse_section(section: Any, origin: str, base_dir: str, allow_file: bool):
    """-> (styles {name: abs path}, modes tuple or None, config_file abs path or None)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: the {SECTION} configuration must be a JSON object, got {type(section).__name__}")
    allowed = _SECTION_KEYS if allow_file else _SECTION_KEYS[:2]
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{origin}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(allowed: {', '.join(allowed)})")
    styles = section.get("styles", {})
    if not isinstance(styles, Mapping):
        raise ConfigError(f"{origin}: 'styles' must be an object mapping style names to .stylepack paths")
    out = {}
    for name, path in styles.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{origin}: bad style name {name!r} (letters, digits, '_', '.', '-'; at most 64)")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{origin}: style {name!r} needs a .stylepack path (a string), got {path!r}")
        out[name] = os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))
    modes = section.get("modes")
    if modes is not None:
        if (not isinstance(modes, list) or not modes or not all(isinstance(m, str) and m for m in modes)
                or len(set(modes)) != len(modes)):
            raise ConfigError(f"{origin}: 'modes' must be a non-empty list of distinct mode names, got {modes!r}")
        modes = tuple(modes)
    cfile = section.get("config_file") if allow_file else None
    if cfile is not None:
        if not isinstance(cfile, str) or not cfile:
            raise ConfigError(f"{origin}: 'config_file' must be a path (a string), got {cfile!r}")
        cfile = os.path.abspath(os.path.join(base_dir, os.path.expanduser(cfile)))
    return out, modes, cfile


def _read_file(path: str, origin: str):
    if not os.path.exists(path):
        raise ConfigError(f"{origin}: config file not found: {path!r}")
    if os.path.isdir(path):
        raise ConfigError(f"{origin}: {path!r} is a folder, not a JSON config file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: {path!r} is not valid JSON ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: cannot read {path!r} ({exc})") from exc
    if isinstance(data, Mapping) and SECTION in data:
        data = data[SECTION]
    return _parse_section(data, f"{origin} {path!r}", os.path.dirname(path), allow_file=False)[:2]


def read_config(additional_config: Mapping | None = None, environ: Mapping | None = None) -> StyleConfig | None:
    """Merge the three sources. None when none of them mentions ngram_style; ConfigError when one
    is malformed or when the styles are configured but empty."""
    environ = os.environ if environ is None else environ
    sources = []  # (origin, styles, modes) in precedence order
    section = additional_config.get(SECTION) if isinstance(additional_config, Mapping) else None
    if section is not None:
        styles, modes, cfile = _parse_section(section, "--additional-config", os.getcwd(), allow_file=True)
        sources.append(("--additional-config", styles, modes))
        if cfile is not None:
            sources.append((f"config_file {cfile!r}", *_read_file(cfile, "config_file")))
    env_path = getenv("CONFIG", environ)
    if env_path:
        sources.append((f"{ENV_CONFIG}={env_path!r}", *_read_file(os.path.abspath(env_path), ENV_CONFIG)))
    if not sources:
        return None
    styles, origin_of, modes = {}, {}, None
    for origin, s, m in sources:
        for name, path in s.items():
            if name in styles and styles[name] != path:
                raise ConfigError(f"style {name!r} is configured twice with different packs: {styles[name]!r} "
                                  f"({origin_of[name]}) and {path!r} ({origin})")
            styles.setdefault(name, path)
            origin_of.setdefault(name, origin)
        modes = m if modes is None else modes
    if not styles:
        raise ConfigError(f"no styles configured (sources: {', '.join(o for o, _, _ in sources)}); add e.g. "
                          f'{{"{SECTION}": {{"styles": {{"quixote": "packs/quixote.stylepack"}}}}}}')
    return StyleConfig(styles, modes or DEFAULT_MODES)


def config_from_vllm_config(vllm_config) -> StyleConfig:
    """The engine side: the configuration must exist."""
    cfg = read_config(getattr(vllm_config, "additional_config", None) or {})
    if cfg is None:
        raise ConfigError(
            "vllm-ngram-style's logits processor is enabled but no styles are configured: pass "
            f'--additional-config \'{{"{SECTION}": {{"styles": {{"NAME": "PATH.stylepack"}}}}}}\' '
            f"or set {ENV_CONFIG} to a JSON config file (or use `vllm-ngram-style serve`)")
    return cfg


def parse_style_flags(flags: list[str]) -> dict:
    """--style NAME=PATH flags (serve, generate, bench) -> {name: path}."""
    styles = {}
    for item in flags:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--style wants NAME=PATH.stylepack, got {item!r}")
        if name in styles and styles[name] != path:
            raise ConfigError(f"--style {name!r} given twice ({styles[name]!r} and {path!r})")
        styles[name] = path
    return styles
