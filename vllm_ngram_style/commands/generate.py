"""vllm-ngram-style generate --model DIR --style NAME=PACK [...]: steered and unsteered text side by side.

Runs vLLM offline with the style processor; every prompt is generated once unsteered and once per
style, all in one batch (each request carries its own style arguments, as a server's would).
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time

from ..errors import ConfigError
from ..request_args import DEFAULT_STRENGTH, parse_request_args
from ..launch import PROCESSOR_CLASS, add_style_arguments, check_styles, cpu_defaults, style_section

DEFAULT_PROMPTS = (
    "The old lighthouse keeper climbed the stairs one last time, and",
    '"Where have you been all night?" she asked. He took off his hat and said,',
    "The history of the printing press begins",
    "To set up the new system, the first step is",
)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="'smollm2' or a local model folder (the packs must be trained with its tokenizer)")
    add_style_arguments(p)
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                   help=f"lambda, 0..5 (default {DEFAULT_STRENGTH})")
    p.add_argument("--mode", default="exact", help="steering mode: exact (default), paper, kn")
    p.add_argument("--adaptive", action="store_true", help="scale lambda by the model's entropy at each step")
    p.add_argument("--loop-guard", type=int, default=0, metavar="N",
                   help="no boost for a token that would repeat an N-gram of the output (2..8; 0 = off)")
    p.add_argument("--loop-penalty", type=float, default=0.0, metavar="NATS",
                   help="with --loop-guard: push such a token strength x NATS below its unsteered logit (0..20)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; default: 4 built-in ones)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on CPU, auto on GPU)")
    p.add_argument("--max-model-len", type=int, default=None, help="engine context length (default: the model's)")
    p.add_argument("--compile", action="store_true",
                   help="let vLLM compile the model (faster decoding, slower start; the default on GPU)")
    p.add_argument("--width", type=int, default=0, help="output width in characters (default: the terminal's)")
    p.add_argument("--verbose", action="store_true", help="keep vLLM's own log output")


def _request_extra(args, name: str) -> dict:
    extra = {"style": name, "style_strength": args.strength, "style_mode": args.mode}
    if args.adaptive:
        extra["style_adaptive"] = 1
    if args.loop_guard:
        extra["style_loop_guard"] = args.loop_guard
    if args.loop_penalty:
        extra["style_loop_penalty"] = args.loop_penalty
    return extra


def _label(args, name: str) -> str:
    bits = [f"λ={args.strength:g}", args.mode]
    if args.adaptive:
        bits.append("adaptive")
    if args.loop_guard:
        bits.append(f"loop guard {args.loop_guard}" + (f", penalty {args.loop_penalty:g}" if args.loop_penalty else ""))
    return f"{name} ({', '.join(bits)})"


def _printable(text: str) -> str:
    """One line of text: whitespace runs become one space, control characters a visible mark."""
    return "".join(c if c.isprintable() else "\ufffd" for c in " ".join(text.split()))


def render(prompt: str, columns: list[tuple[str, str]], width: int) -> str:
    """One prompt's results: side by side when each column gets 32+ characters, else stacked."""
    rule = "━" * width
    lines = [rule, textwrap.fill(prompt, width), rule]
    n = len(columns)
    col = (width - 3 * (n - 1)) // n
    if col >= 32:
        wrapped = [[title[:col], "─" * min(col, max(len(title), 10))] + (textwrap.wrap(text, col) or ["(empty)"])
                   for title, text in columns]
        for row in range(max(map(len, wrapped))):
            cells = [(w[row] if row < len(w) else "").ljust(col) for w in wrapped]
            lines.append(" │ ".join(cells).rstrip())
    else:
        for title, text in columns:
            lines += [title, "─" * min(width, max(len(title), 10)), textwrap.fill(text, width) or "(empty)", ""]
    return "\n".join(lines)


def run(args) -> int:
    if not args.style and not args.style_config:
        raise ConfigError("give at least one --style NAME=PATH.stylepack")
    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if not (args.temperature >= 0):
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    from ..models import resolve_model

    args.model = resolve_model(args.model)  # "smollm2" or a local model folder
    args.modes = args.mode  # compile only the mode this run uses
    cfg, packs = check_styles(style_section(args), args.model)
    for name in cfg.names:  # the same validation a server applies to a request
        parse_request_args(_request_extra(args, name), cfg.names, cfg.modes)

    cpu_defaults()
    import torch

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: starts in seconds
    if not args.verbose:
        import warnings

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    width = args.width or min(shutil.get_terminal_size((120, 24)).columns, 160)
    print(f"model: {args.model}\nstyles: {', '.join(cfg.names)}   ({len(prompts)} prompt{'s' if len(prompts) > 1 else ''} x "
          f"{len(cfg.names) + 1} variants, {args.max_tokens} tokens each, "
          f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature:g}'})\n"
          "loading the engine...", file=sys.stderr, flush=True)

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype or ("float32" if on_cpu else "auto"), seed=args.seed,
              max_model_len=args.max_model_len, logits_processors=[PROCESSOR_CLASS],
              enforce_eager=on_cpu and not args.compile,  # on CPU compiling costs more than a short run saves
              # seeded sampling + chunked prefill crashes vLLM 0.32's CPU runner (see launch.cpu_vllm_args)
              enable_chunked_prefill=False if on_cpu else None,
              additional_config={"ngram_style": {"styles": cfg.styles, "modes": list(cfg.modes)}})
    variants = [("unsteered", None)] + [(_label(args, n), _request_extra(args, n)) for n in cfg.names]
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                             extra_args=extra) for _, extra in variants]
    t0 = time.perf_counter()
    if args.chat:
        conversations = [[{"role": "user", "content": p}] for p in prompts for _ in variants]
        outs = llm.chat(conversations, params * len(prompts), use_tqdm=False)
    else:
        outs = llm.generate([p for p in prompts for _ in variants], params * len(prompts), use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    for i, prompt in enumerate(prompts):
        cols = [(title, _printable(outs[i * len(variants) + j].outputs[0].text))
                for j, (title, _) in enumerate(variants)]
        print(render(prompt, cols, width))
    print(f"\n{tokens} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} tokens/s, "
          f"{len(outs)} requests in one batch)", file=sys.stderr)
    return 0
