"""vllm-ngram-style eval --model smollm2 --pack quixote.stylepack [--pack news=news.stylepack] --out DIR

Sweeps style strength and modes (paper, exact, exact+adaptive, best = exact+adaptive+loop guard),
plus the prompt-only baseline and prompt+best, greedy and top-p sampling, and writes the paper's
metrics as CSV, JSON, PNG plots and a markdown summary.

Style measured by what the steering never saw (issue 16): with --heldout-pack NAME=PATH (a pack of
the corpus's held-out part, train --part heldout) every generation also gets its style perplexity
under that pack; with --style-corpus NAME=PATH, style classifiers (evaluation/style_classifier.py)
learn the corpus's held-out part against the model's unsteered replies to non-evaluation prompts
and give every generation a P(style). The in-sample style perplexity stays, labelled as such.
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
    p.add_argument("--heldout-pack", action="append", default=[], metavar="NAME=PATH",
                   help="a pack of the held-out part of style NAME's corpus (train --part heldout; NAME's --pack "
                        "should be trained --part train): every generation's style perplexity under it too "
                        "(repeatable)")
    p.add_argument("--style-corpus", action="append", default=[], metavar="NAME=PATH",
                   help="the corpus file style NAME's packs were trained on: its held-out part trains the style "
                        "classifiers (repeatable; with --report-only, classifies an existing run's generations)")
    p.add_argument("--negative-corpus", action="append", default=[], metavar="PATH",
                   help="another corpus whose held-out part is a classifier negative (repeatable; the other "
                        "--style-corpus files are negatives already)")
    p.add_argument("--classifiers", default=None,
                   help="style classifiers to train when --style-corpus is given: tfidf, minilm or tfidf,minilm "
                        "(default), or none")
    p.add_argument("--negative-prompts", type=int, default=40,
                   help="how many built-in non-evaluation prompts the model answers unsteered, as classifier "
                        "negatives (default 40, all; generated only with classifiers)")
    p.add_argument("--classifier-folds", type=int, default=5, help="cross-validation folds (default 5)")
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


def parse_named(specs: list, flag: str) -> dict:
    """['NAME=PATH', ...] -> {name: abs path}, each path checked to exist."""
    from ..corpus import resolve_corpus_path
    from ..errors import ConfigError

    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {s[:80]!r}: expected NAME=PATH (NAME: the evaluated style's name)")
        path = resolve_corpus_path(path)
        if not os.path.exists(path):
            raise ConfigError(f"{flag} {s[:80]!r}: file not found")
        if name in out:
            raise ConfigError(f"{flag}: style {name!r} given twice")
        out[name] = os.path.abspath(path)
    return out


def check_heldout_packs(heldout: dict, named: list, log=print) -> None:
    """A held-out pack must be one (part heldout), for a style that is evaluated; a steering pack
    that saw its held-out documents makes the held-out figures in-sample, which is said loudly."""
    from ..corpus_split import pack_part
    from ..errors import ConfigError
    from ..pack import load_pack

    packs = {n: p for n, _, p in named}
    for name, path in heldout.items():
        if name not in packs:
            raise ConfigError(f"--heldout-pack {name}=...: no --pack is named {name!r} (names: {', '.join(packs)})")
        part = pack_part(load_pack(path).corpus)
        if part != "heldout":
            raise ConfigError(f"--heldout-pack {name}={os.path.basename(path)}: the pack was trained on part "
                              f"{part!r}, not the held-out part; train it with --part heldout")
        if pack_part(packs[name].corpus) != "train":
            log(f"warning: style {name!r}: the steering pack was trained on part "
                f"{pack_part(packs[name].corpus)!r}, so it saw the held-out documents; train it with --part train "
                "for held-out figures that are held out")


def _classify(args, result: dict, style_corpora: dict, kinds: tuple) -> None:
    from ..evaluation.style_classifier import classify_result

    if kinds and style_corpora:
        classify_result(result, kinds, style_corpora, [os.path.abspath(p) for p in args.negative_corpus],
                        args.classifier_folds, args.seed, log=print if not args.quiet else (lambda *a: None))


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
    from ..evaluation.style_classifier import parse_classifiers
    from ..models import resolve_model
    from ..request_args import MAX_LOOP_PENALTY

    corpus_texts = parse_corpus_texts(args.corpus_text)
    style_corpora = parse_named(args.style_corpus, "--style-corpus")
    heldout_packs = parse_named(args.heldout_pack, "--heldout-pack")
    kinds = parse_classifiers(args.classifiers if args.classifiers is not None else
                              ("tfidf,minilm" if style_corpora else "none"))
    if kinds and not style_corpora:
        raise ConfigError("--classifiers needs --style-corpus NAME=PATH (the corpus whose held-out part they learn)")
    if args.classifier_folds < 2:
        raise ConfigError(f"--classifier-folds must be at least 2, got {args.classifier_folds}")
    for p in args.negative_corpus:
        if not os.path.exists(p):
            raise ConfigError(f"--negative-corpus {p[:80]!r}: file not found")
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
        _classify(args, result, style_corpora, kinds)
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
    for name in style_corpora:
        if name not in {n for n, _, _ in named}:
            raise ConfigError(f"--style-corpus {name}=...: no --pack is named {name!r}")
    check_heldout_packs(heldout_packs, named)
    if args.negative_prompts < 0:
        raise ConfigError(f"--negative-prompts must be at least 0, got {args.negative_prompts}")
    if kinds and args.negative_prompts == 0:
        raise ConfigError("the style classifiers need the model's replies to non-evaluation prompts: "
                          "--negative-prompts must be at least 1")
    corpora = []
    for name, path, pack in named:
        stem = os.path.splitext((pack.corpus.get("files") or [name])[0])[0]
        instruction = args.instruction or style_instruction(stem if stem else name, args.prompts)
        corpora.append(CorpusSpec(name, path, instruction, heldout_packs.get(name)))
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
                            family_lambdas=family_lambdas, negative_prompts=args.negative_prompts if kinds else 0)
    result = run_evaluation(model_dir, corpora, prompts, settings, backend=args.backend, progress=not args.quiet,
                            enforce_eager=args.enforce_eager, max_num_seqs=args.max_num_seqs,
                            on_corpus_done=lambda partial: write_report(partial, args.out, plots=False))
    if corpus_texts:
        result["anchors"] = _anchors(args, model_dir, corpus_texts, {n: p for n, _, p in named}, prompts,
                                     args.max_tokens)
    _classify(args, result, style_corpora, kinds)
    paths = write_report(result, args.out, plots=not args.no_plots)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
