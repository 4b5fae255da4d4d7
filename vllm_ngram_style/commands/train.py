"""vllm-ngram-style train --tokenizer MODEL_DIR --corpus PATH [PATH...] --out NAME.stylepack"""
from __future__ import annotations

from .count import add_corpus_arguments


def add_arguments(p) -> None:
    add_corpus_arguments(p)
    p.add_argument("--out", required=True, help="output path, e.g. quixote.stylepack")
    p.add_argument("--orders", type=int, default=3, help="highest n-gram order, 1..6 (default 3)")
    add_pack_arguments(p)
    p.add_argument("--kneser-ney", action="store_true",
                   help="also store interpolated modified Kneser-Ney tables from the full counts (mode 'kn'); "
                        "the full counts are then held in memory, beyond --memory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_pack_arguments(p) -> None:
    """What a pack stores beyond the counts (shared with `merge`)."""
    p.add_argument("--top-k", type=int, default=512, help="continuations kept per context (default 512)")
    p.add_argument("--smoothing-k", type=float, default=1e-3, help="additive smoothing k (default 1e-3)")
    p.add_argument("--weights", type=float, nargs="+", help="per-order weights w_1..w_N (default: paper's)")
    p.add_argument("--name", default="", help="style name stored in the pack (default: first corpus file's name)")


def run(args) -> int:
    from ..train import train_to_file

    summary = train_to_file(args.out, args.tokenizer, args.corpus, args.orders, args.top_k, args.smoothing_k,
                            args.weights, args.split, args.name, progress=not args.quiet,
                            kneser_ney=args.kneser_ney, memory=args.memory, encoding=args.encoding,
                            jsonl_field=args.jsonl_field, spill_dir=args.tmp_dir, part=args.part)
    print(f"wrote {args.out}" + ("" if args.part == "all" else f" (part {args.part})"))
    for line in summary.lines():
        print("  " + line)
    return 0
