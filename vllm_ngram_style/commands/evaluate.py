"""vllm-ngram-style eval --model smollm2 --pack quixote.stylepack [--pack news=news.stylepack] --out DIR

Sweeps style strength and modes (paper, exact, exact+adaptive, best = exact+adaptive+loop guard),
plus the prompt-only baseline and prompt+best, greedy and top-p sampling, and writes the paper's
metrics as CSV, JSON, PNG plots and a markdown summary.
"""
from __future__ import annotations

import os


def add_arguments(p) -> None:
    from ..evaluation.runner import DECODINGS, DEFAULT_GUARD, PAPER_LAMBDAS, STEERED_FAMILIES, EXTRA_FAMILIES

    p.add_argument("--report-only", action="store_true",
                   help="only rebuild the CSV/plots/markdown in --out from its results.json (no generation)")
    p.add_argument("--model", help="'smollm2' or a local Hugging Face model folder")
    p.add_argument("--pack", action="append", metavar="[NAME=]PATH",
                   help="a .stylepack to evaluate (repeatable); NAME defaults to the pack's own name")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--prompts", help="prompt JSON file (default: the built-in 20 generic prompts)")
    p.add_argument("--num-prompts", type=int, help="use only the first N prompts (after --per-category)")
    p.add_argument("--per-category", type=int, help="use the first N prompts of each category, interleaved")
    p.add_argument("--instruction", help="prompt-only baseline instruction (one pack only; default: per corpus)")
    p.add_argument("--lambdas", type=float, nargs="+", default=list(PAPER_LAMBDAS), help="strengths to sweep")
    p.add_argument("--prompt-lambdas", type=float, nargs="*", help="strengths of prompt+best (default: --lambdas)")
    p.add_argument("--families", nargs="+", default=list(STEERED_FAMILIES), choices=[*STEERED_FAMILIES, *EXTRA_FAMILIES],
                   help="steered configuration families")
    p.add_argument("--decodings", nargs="+", default=list(DECODINGS), choices=list(DECODINGS))
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per generation (default 128)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (greedy ignores it)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of prompt i is seed + i")
    p.add_argument("--loop-guard", type=int, default=DEFAULT_GUARD, help="n-gram size of the best mode's loop guard")
    p.add_argument("--loop-penalty", type=float, default=0.0,
                   help="best mode's loop penalty: a guarded token goes strength x this many nats below its "
                        "unsteered logit (default 0: the guard only withholds the boost)")
    p.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"],
                   help="auto: vLLM with the plugin when installed, else the transformers loop")
    p.add_argument("--js-prompts", type=int,
                   help="vLLM backend: JS divergence (a transformers forward per sequence) for the first N prompts "
                        "only (default all; 0 = none)")
    p.add_argument("--js-decodings", nargs="+", choices=list(DECODINGS), help="vLLM backend: JS divergence only "
                   "for these decodings (default all)")
    p.add_argument("--family-lambdas", action="append", default=[], metavar="FAMILY=L1,L2,...",
                   help="a coarser (or other) strength grid for one family, e.g. paper=0.1,0.3,1 (repeatable)")
    p.add_argument("--sample-families", nargs="+",
                   choices=["unsteered", "prompt", *STEERED_FAMILIES, *EXTRA_FAMILIES, "prompt+best"],
                   help="run sampling only for these families (default all; greedy always runs every family)")
    p.add_argument("--corpus-text", action="append", default=[], metavar="NAME=PATH",
                   help="also score real passages of corpus NAME's text (the file it was trained on) as the "
                        "frontier's far end (repeatable; with --report-only, add --model and --pack)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="vLLM: sequences decoded together (default 256)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM: skip graph compilation")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_packs(specs: list) -> list:
    """['NAME=PATH' or 'PATH', ...] -> [(name or None, abs path)]."""
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or os.path.exists(s):
            name, path = None, s
        out.append((name, os.path.abspath(path)))
    return out


def load_named_packs(specs: list) -> list:
    """--pack values -> [(name, abs path, StylePack)], names unique."""
    from ..errors import ConfigError
    from ..pack import load_pack

    out, names = [], set()
    for name, path in parse_packs(specs):
        pack = load_pack(path)
        name = name or pack.name or os.path.splitext(os.path.basename(path))[0]
        if name in names:
            raise ConfigError(f"style name {name!r} given twice; name packs with NAME=PATH")
        names.add(name)
        out.append((name, path, pack))
    return out


def parse_corpus_texts(specs: list) -> list:
    """['NAME=PATH', ...] -> [(name, abs path)]."""
    from ..errors import ConfigError

    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--corpus-text {s!r}: expected NAME=PATH (NAME: the evaluated style's name)")
        out.append((name, os.path.abspath(path)))
    return out


def _anchors(args, model_dir, corpus_texts, packs, prompts, n_tokens):
    from ..evaluation.anchor import compute_anchors

    return compute_anchors(model_dir, corpus_texts, packs, prompts, n_tokens, progress=not args.quiet)


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..corpus import read_text
    from ..errors import ConfigError
    from ..evaluation.prompts import load_prompts, style_instruction
    from ..evaluation.report import write_report
    from ..evaluation.runner import CorpusSpec, EvalSettings, run_evaluation
    from ..models import resolve_model
    from ..request_args import MAX_LOOP_PENALTY

    corpus_texts = parse_corpus_texts(args.corpus_text)
    if args.report_only:
        from ..evaluation.prompts import Prompt
        from ..evaluation.report import load_result

        if not os.path.isfile(os.path.join(args.out, "results.json")):
            raise ConfigError(f"--report-only: no results.json in {args.out!r}")
        result = load_result(args.out)
        if corpus_texts:
            if not args.model or not args.pack:
                raise ConfigError("--report-only with --corpus-text needs --model and --pack (to score the text)")
            packs = {name: pack for name, _, pack in load_named_packs(args.pack)}
            prompts = [Prompt(**p) for p in result["meta"]["prompts"]]
            fresh = _anchors(args, resolve_model(args.model), corpus_texts, packs, prompts,
                             result["meta"]["settings"]["max_tokens"])
            result["anchors"] = [a for a in result["anchors"] if a["corpus"] not in dict(corpus_texts)] + fresh
        for kind, path in write_report(result, args.out, plots=not args.no_plots).items():
            print(f"{kind}: {path}")
        return 0
    if not args.model or not args.pack:
        raise ConfigError("--model and --pack are required (unless --report-only)")
    model_dir = resolve_model(args.model)
    named = load_named_packs(args.pack)
    if args.instruction and len(named) > 1:
        raise ConfigError("--instruction applies to a single pack; the built-in instructions cover several")
    for name, path in corpus_texts:  # fail before hours of generation, not after
        if name not in {n for n, _, _ in named}:
            raise ConfigError(f"--corpus-text {name}={path}: no --pack is named {name!r}")
        read_text(path)
    corpora = []
    for name, path, pack in named:
        stem = os.path.splitext((pack.corpus.get("files") or [name])[0])[0]
        instruction = args.instruction or style_instruction(stem if stem else name, args.prompts)
        corpora.append(CorpusSpec(name, path, instruction))
    prompts = load_prompts(args.prompts, args.num_prompts, args.per_category)
    if args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    if not 0 <= args.loop_penalty <= MAX_LOOP_PENALTY:
        raise ConfigError(f"--loop-penalty must lie in [0, {MAX_LOOP_PENALTY:g}]")
    if any(not (0 <= x <= 5) for x in args.lambdas):
        raise ConfigError("--lambdas must lie in [0, 5]")
    lambdas = tuple(sorted(set([0.0] + list(args.lambdas))))
    family_lambdas = {}
    for spec in args.family_lambdas:
        fam, sep, values = spec.partition("=")
        if not sep or fam not in args.families:
            raise ConfigError(f"--family-lambdas {spec!r}: expected FAMILY=L1,L2,... with FAMILY in {args.families}")
        try:
            family_lambdas[fam] = tuple(sorted({float(x) for x in values.split(",") if x.strip()}))
        except ValueError as exc:
            raise ConfigError(f"--family-lambdas {spec!r}: {exc}") from exc
    settings = EvalSettings(lambdas=lambdas, families=tuple(args.families),
                            prompt_lambdas=tuple(sorted(set(args.prompt_lambdas))) if args.prompt_lambdas is not None
                            else lambdas,
                            decodings=tuple(dict.fromkeys(args.decodings)), max_tokens=args.max_tokens,
                            top_p=args.top_p, temperature=args.temperature, seed=args.seed,
                            loop_guard=args.loop_guard, loop_penalty=args.loop_penalty, js_prompts=args.js_prompts,
                            js_decodings=tuple(args.js_decodings or args.decodings),
                            sample_families=tuple(args.sample_families) if args.sample_families else None,
                            family_lambdas=family_lambdas)
    result = run_evaluation(model_dir, corpora, prompts, settings, backend=args.backend, progress=not args.quiet,
                            enforce_eager=args.enforce_eager, max_num_seqs=args.max_num_seqs,
                            on_corpus_done=lambda partial: write_report(partial, args.out, plots=False))
    if corpus_texts:
        result["anchors"] = _anchors(args, model_dir, corpus_texts, {n: p for n, _, p in named}, prompts,
                                     args.max_tokens)
    paths = write_report(result, args.out, plots=not args.no_plots)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
