"""vllm-ngram-style generate --model DIR --style NAME=PACK [...]: steered and unsteered text side by side.

Runs vLLM offline with the style processor; every prompt is generated once unsteered and once per
style, all in one batch (each request carries its own style arguments, as a server's would).

The defaults are the settings the full-size evaluation found best (docs/results.md): top-p
sampling with a fixed seed, exact mode, adaptive strength, a 4-gram loop guard with penalty 3;
``--greedy`` is one flag away. ``--score NAME=PACK`` scores every column under a pack trained on
documents the steering pack never saw (``train --part heldout``): a style perplexity that steering
cannot lower just by replaying its own counts, printed beside the base model's perplexity.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import textwrap
import time

from ..errors import ConfigError
from ..request_args import parse_request_args
from ..launch import PROCESSOR_CLASS, add_style_arguments, check_styles, cpu_defaults, style_section

DEFAULT_PROMPTS = (
    "The old lighthouse keeper climbed the stairs one last time, and",
    '"Where have you been all night?" she asked. He took off his hat and said,',
    "The history of the printing press begins",
    "To set up the new system, the first step is",
)
DEMO_STRENGTH = 1.0  # the held-out evaluation (docs/results.md) meets its style goal at 1.0 on all three corpora
BEST_GUARD, BEST_PENALTY = 4, 3.0  # best mode as evaluated (docs/results.md)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="'smollm2' or a local model folder (the packs must be trained with its tokenizer)")
    add_style_arguments(p)
    p.add_argument("--strength", type=float, default=DEMO_STRENGTH,
                   help=f"lambda, 0..5 (default {DEMO_STRENGTH})")
    p.add_argument("--mode", default="exact", help="steering mode: exact (default), paper, kn")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                   help="scale lambda by the model's entropy at each step (default on)")
    p.add_argument("--loop-guard", type=int, default=BEST_GUARD, metavar="N",
                   help=f"no boost for a token that would repeat an N-gram of the output (2..8; 0 = off; "
                        f"default {BEST_GUARD})")
    p.add_argument("--loop-penalty", type=float, default=None, metavar="NATS",
                   help=f"with --loop-guard: push such a token strength x NATS below its unsteered logit "
                        f"(0..20; default {BEST_PENALTY:g} when the guard is on)")
    p.add_argument("--score", action="append", default=[], metavar="NAME=PACK",
                   help="score style NAME's column (and the unsteered one) under PACK, a pack trained on "
                        "held-out documents of the same corpus (train --part heldout); repeatable")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; default: 4 built-in ones)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0): the same text every run")
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


def _settle_defaults(args) -> None:
    """Defaults that depend on other flags: --greedy wins over --temperature; the loop penalty's
    default applies only where the guard is on (a penalty without a guard is an error)."""
    if args.greedy:
        args.temperature = 0.0
    if args.loop_penalty is None:
        args.loop_penalty = BEST_PENALTY if args.loop_guard else 0.0


def _decoding(args) -> str:
    if args.temperature == 0:
        return "greedy"
    return f"sampling (temperature {args.temperature:g}, top-p {args.top_p:g}, seed {args.seed})"


def load_score_packs(specs: list, style_names) -> dict:
    """--score NAME=PACK values -> {name: PackScorer}; NAME must be a style of this run."""
    from ..evaluation.metrics import PackScorer
    from ..pack import load_pack

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--score {spec[:80]!r}: expected NAME=PACK")
        if name not in style_names:
            raise ConfigError(f"--score {name[:40]!r}: not a style of this run ({', '.join(style_names)})")
        if name in out:
            raise ConfigError(f"--score {name[:40]!r} given twice")
        out[name] = PackScorer(load_pack(path))
    return out


def base_ppl(logprobs) -> float:
    """Perplexity of a generation under the unsteered model, from vLLM's raw per-token logprobs."""
    lps = [float(x) for x in logprobs]
    return math.exp(-sum(lps) / len(lps)) if lps else float("nan")


def score_line(scorers: dict, names: list, token_ids: list, logprobs: list) -> str:
    """'held-out quixote ppl 812 · base ppl 9.1' for one column."""
    bits = [f"held-out {n} ppl {scorers[n].style_ppl(token_ids):.0f}" for n in names if n in scorers]
    bits.append(f"base ppl {base_ppl(logprobs):.1f}")
    return " · ".join(bits)


def _settings(args) -> str:
    """'exact, adaptive, loop guard 4, penalty 3': how every steered column was steered."""
    bits = [args.mode]
    if args.adaptive:
        bits.append("adaptive")
    if args.loop_guard:
        bits.append(f"loop guard {args.loop_guard}" + (f", penalty {args.loop_penalty:g}" if args.loop_penalty else ""))
    return ", ".join(bits)


def _label(args, name: str) -> str:
    return f"{name} (λ={args.strength:g}, {_settings(args)})"


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
        wrapped = [[t[:col] for t in title.split("\n")] + ["─" * min(col, max(len(title.split("\n")[0]), 10))]
                   + (textwrap.wrap(text, col) or ["(empty)"]) for title, text in columns]
        for row in range(max(map(len, wrapped))):
            cells = [(w[row] if row < len(w) else "").ljust(col) for w in wrapped]
            lines.append(" │ ".join(cells).rstrip())
    else:
        for title, text in columns:
            lines += [*title.split("\n"), "─" * min(width, max(len(title.split("\n")[0]), 10)),
                      textwrap.fill(text, width) or "(empty)", ""]
    return "\n".join(lines)


def run(args) -> int:
    if not args.style and not args.style_config:
        raise ConfigError("give at least one --style NAME=PATH.stylepack")
    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if not (args.temperature >= 0):
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    if not (0 < args.top_p <= 1):
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    _settle_defaults(args)
    from ..models import resolve_model

    args.model = resolve_model(args.model)  # "smollm2" or a local model folder
    args.modes = args.mode  # compile only the mode this run uses
    cfg, packs = check_styles(style_section(args), args.model)
    for name in cfg.names:  # the same validation a server applies to a request
        parse_request_args(_request_extra(args, name), cfg.names, cfg.modes)
    scorers = load_score_packs(args.score, cfg.names)

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
          f"{_decoding(args)})\n"
          "loading the engine...", file=sys.stderr, flush=True)

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype or ("float32" if on_cpu else "auto"), seed=args.seed,
              max_model_len=args.max_model_len, logits_processors=[PROCESSOR_CLASS],
              enforce_eager=on_cpu and not args.compile,  # on CPU compiling costs more than a short run saves
              # seeded sampling + chunked prefill crashes vLLM 0.32's CPU runner (see launch.cpu_vllm_args)
              enable_chunked_prefill=False if on_cpu else None,
              additional_config={"ngram_style": {"styles": cfg.styles, "modes": list(cfg.modes)}})
    variants = [("unsteered", None)] + [(_label(args, n), _request_extra(args, n)) for n in cfg.names]
    # logprobs=0: vLLM's raw (unsteered) logprob of each sampled token, for the base perplexity
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                             top_p=args.top_p if args.temperature > 0 else 1.0, seed=args.seed,
                             logprobs=0, extra_args=extra) for _, extra in variants]
    t0 = time.perf_counter()
    if args.chat:
        conversations = [[{"role": "user", "content": p}] for p in prompts for _ in variants]
        outs = llm.chat(conversations, params * len(prompts), use_tqdm=False)
    else:
        outs = llm.generate([p for p in prompts for _ in variants], params * len(prompts), use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"steered: {', '.join(cfg.names)} at λ={args.strength:g} ({_settings(args)}), "
          f"{_decoding(args)}; unsteered is the same request without a style"
          + ("; held-out ppl: style perplexity under a pack of documents steering never saw (lower = closer "
             "to the style), base ppl: under the model itself (lower = more fluent)" if scorers else ""))
    medians: dict = {}  # variant title -> [(held-out ppl per scored style..., base ppl) per prompt]
    for i, prompt in enumerate(prompts):
        cols = []
        for j, (title, extra) in enumerate(variants):
            c = outs[i * len(variants) + j].outputs[0]
            shown = title
            if scorers:
                names = list(scorers) if extra is None else [extra["style"]]
                lps = [float(step[t].logprob) for t, step in zip(c.token_ids, c.logprobs or [])]
                shown = f"{title}\n{score_line(scorers, names, list(c.token_ids), lps)}"
                medians.setdefault(title, []).append(
                    [scorers[n].style_ppl(list(c.token_ids)) for n in names if n in scorers] + [base_ppl(lps)])
            cols.append((shown, _printable(c.text)))
        print(render(prompt, cols, width))
    if scorers and len(prompts) > 1:
        print(f"\nmedians over the {len(prompts)} prompts:")
        for (title, extra), rows in zip(variants, medians.values()):
            names = list(scorers) if extra is None else [extra["style"]]
            cols_ = list(zip(*rows))
            bits = [f"held-out {n} ppl {statistics.median(v):.0f}" for n, v in zip([n for n in names if n in scorers], cols_)]
            print(f"  {title}: {' · '.join(bits + [f'base ppl {statistics.median(cols_[-1]):.1f}'])}")
    print(f"\n{tokens} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} tokens/s, "
          f"{len(outs)} requests in one batch)", file=sys.stderr)
    return 0
