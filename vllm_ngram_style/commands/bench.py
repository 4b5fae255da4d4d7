"""vllm-ngram-style bench: end-to-end offline vLLM throughput with and without style steering.

Runs every variant in the same process and interleaves them round by round: (a) no logits
processor, (b) the plugin loaded with no request steered, the plugin with 50%/100% of requests
steered over 1 or 4 styles, and (c) a naive per-request processor; reports ratios against (a).
The machinery lives in vllm_ngram_style/bench/ (benchmarks/e2e_throughput.py runs the same with
this checkout's result paths). Per-step host cost and syncs: benchmarks/host_overhead.py; GPU:
benchmarks/gpu_step_bench.py.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time

from ..bench.e2e import E2EModel, E2ESettings, default_variants, run_e2e, summarise
from ..bench.packs import corpus_for, real_packs, tiny_model_and_packs, token_stream
from ..bench.report import machine_description, markdown_table, plot, vllm_version
from ..config import parse_style_flags
from ..settings import getenv

# vLLM's CPU backend on small shared machines: see docs/vllm-notes.md
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}


def add_arguments(p) -> None:
    p.add_argument("--models", nargs="+", default=["smollm2", "tiny"],
                   help="smollm2 (converted SmolLM2-135M), tiny (random 2-layer Llama), or model folders")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="max_num_seqs values (default: smollm2 1 16 64; tiny 1 16 64 256)")
    p.add_argument("--style", action="append", default=[], metavar="NAME=PACK",
                   help="styles for a model folder given in --models (default for smollm2: packs counted from "
                        "--corpora, cached)")
    p.add_argument("--corpora", default=getenv("CORPORA"), metavar="DIR",
                   help="folder with the corpora of the smollm2 styles (cervantes_don_quixote.txt, "
                        "austen_six_novels.txt, bible_kjv.txt, brown_news.txt); default $NGRAM_STYLE_CORPORA. "
                        "Without it only quixote is available (the corpus shipped with the package)")
    p.add_argument("--max-tokens", type=int, default=16,
                   help="mean output tokens per request (default 16; the tiny model, ~100x cheaper per token, gets 2x this)")
    p.add_argument("--length-spread", type=float, default=0.5,
                   help="output lengths uniform in max_tokens x [1-s, 1+s], the same for every variant (default 0.5)")
    p.add_argument("--prompt-len", type=int, default=4, help="prompt tokens per request (default 4)")
    p.add_argument("--requests-per-slot", type=float, default=2.0,
                   help="requests per batch slot: N = this x max_num_seqs (default 2: requests join as others finish)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; every variant runs once per round (default 3)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.5, 1.0], help="steered fractions (default 0.5 1)")
    p.add_argument("--style-counts", nargs="+", type=int, default=[1, 4], help="styles among steered requests")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable CPU time on a shared machine)")
    p.add_argument("--quick", action="store_true", help="tiny model only, small sizes: a smoke run of a minute")
    p.add_argument("--results", default="bench-results/RESULTS.md",
                   help="append the markdown section here ('' to skip; default bench-results/RESULTS.md)")
    p.add_argument("--plot", default="bench-results/throughput_cpu.png", help="PNG path ('' to skip)")
    p.add_argument("--json", default="", help="also write raw rows and the summary as JSON here")
    p.add_argument("--verbose", action="store_true", help="keep vLLM's log output")
    p.add_argument("--from-json", metavar="FILE", help="redraw the table and plot from a --json file; run nothing")


def prepare_environment(threads: int = 1, verbose: bool = False) -> None:
    """CPU defaults for vLLM and one-thread OpenMP; must run before torch/vLLM are imported."""
    for k, v in CPU_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def run(args) -> int:
    if args.from_json:
        with open(args.from_json) as fh:
            data = json.load(fh)
        variants = default_variants(tuple(args.fractions), tuple(args.style_counts))
        print(markdown_table(data["summary"]))
        if args.plot:
            plot(data["summary"], variants, args.plot, data.get("title", "vLLM V1 offline throughput on CPU"))
            print(f"plot: {args.plot}")
        return 0
    prepare_environment(args.threads, args.verbose)
    import tempfile

    from ..errors import ConfigError

    names = ["quixote", "austen", "bible", "news"]
    n_styles = max(args.style_counts)
    if n_styles > len(names) and "smollm2" in args.models:
        raise ConfigError(f"at most {len(names)} styles for smollm2")
    models = []
    tiny_root = os.path.join(tempfile.gettempdir(), "vllm-ngram-style-bench-tiny")
    if args.quick:
        args.models, args.repeats, args.max_tokens = ["tiny"], min(args.repeats, 2), min(args.max_tokens, 8)
        args.batch_sizes = args.batch_sizes or [1, 8]
    for m in args.models:
        if m == "tiny":
            model_dir, packs = tiny_model_and_packs(tiny_root, n_styles)
            models.append(E2EModel("tiny random Llama (V=336)", model_dir, packs, token_stream(model_dir, None),
                                   args.batch_sizes or [1, 16, 64, 256], max_tokens=2 * args.max_tokens))
        else:
            from ..models import resolve_model

            model_dir = resolve_model(m)
            if args.style:
                packs = parse_style_flags(args.style)
            else:
                packs = real_packs(model_dir, names[:n_styles], args.corpora)
            corpus = corpus_for("quixote", args.corpora)
            label = "SmolLM2-135M (V=49152)" if m == "smollm2" else os.path.basename(os.path.normpath(model_dir))
            models.append(E2EModel(label, model_dir, packs, token_stream(model_dir, corpus),
                                   args.batch_sizes or [1, 16, 64], max_tokens=args.max_tokens))
    variants = default_variants(tuple(args.fractions), tuple(args.style_counts))
    settings = E2ESettings(length_spread=args.length_spread, prompt_len=args.prompt_len,
                           requests_per_slot=args.requests_per_slot, repeats=args.repeats, threads=args.threads,
                           variants=variants)
    t0 = time.perf_counter()
    rows = run_e2e(models, settings, log=lambda msg: print(msg, flush=True))
    elapsed = time.perf_counter() - t0
    summary = summarise(rows, variants)
    table = markdown_table(summary)
    command = "vllm-ngram-style bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else \
        "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    load = os.getloadavg()
    section = (
        f"\n## End-to-end offline throughput, vLLM V1 on CPU ({datetime.date.today()})\n\n"
        f"Machine: {machine_description()}; vLLM {vllm_version()}; **shared with other jobs** (load average at the "
        f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores), so wall-clock figures are noisy; "
        f"torch threads {args.threads}.\n"
        f"Command: `{command}` ({elapsed / 60:.1f} min)\n\n"
        f"Per batch size B: engines with max_num_seqs=B, N={args.requests_per_slot:g}xB requests of {args.prompt_len} "
        f"prompt tokens and fixed output lengths uniform in M x [1-{args.length_spread:g}, 1+{args.length_spread:g}], "
        f"M = {', '.join(f'{m.max_tokens} ({m.label})' for m in models)} (ignore_eos, greedy, identical for every variant), so requests join as others "
        f"finish. {args.repeats} rounds; each round runs every variant once, order rotating. Ratios are per round "
        f"against (a) in the same round, median [min-max]. 'CPU' figures divide by the process's CPU time (robust to "
        f"other jobs taking the cores); 'processor share' is the CPU time spent inside the processor's update_state + "
        f"apply over the run's CPU time. Time/output token: median over requests of (last - first token time) / "
        f"(tokens - 1). Steered requests: strength 0.3, exact mode, styles round-robin.\n\n" + table)
    print(section)
    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "a") as fh:
            fh.write(section)
    title = f"vLLM V1 offline throughput on CPU ({datetime.date.today()}; {machine_description()}, shared)"
    if args.plot:
        plot(summary, variants, args.plot, title)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "summary": summary, "title": title}, fh, indent=1, default=str)
    return 0
