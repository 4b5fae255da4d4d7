"""vllm-ngram-style train --tokenizer MODEL_DIR --corpus FILE [FILE...] --out NAME.stylepack"""
from __future__ import annotations

import os


def add_arguments(p) -> None:
    p.add_argument("--tokenizer", required=True, help="local model folder whose tokenizer the server uses")
    p.add_argument("--corpus", nargs="+", required=True, help="UTF-8 text file(s), gzip'd ones too (.gz), or don_quixote (shipped with the package)")
    p.add_argument("--out", required=True, help="output path, e.g. quixote.stylepack")
    p.add_argument("--orders", type=int, default=3, help="highest n-gram order, 1..6 (default 3)")
    p.add_argument("--top-k", type=int, default=512, help="continuations kept per context (default 512)")
    p.add_argument("--smoothing-k", type=float, default=1e-3, help="additive smoothing k (default 1e-3)")
    p.add_argument("--weights", type=float, nargs="+", help="per-order weights w_1..w_N (default: paper's)")
    p.add_argument("--split", default="auto", choices=["auto", "paragraph", "line", "file"],
                   help="what counts as a document (no n-gram crosses one); auto: paragraphs if the file has blank lines, else lines")
    p.add_argument("--name", default="", help="style name stored in the pack (default: corpus file name)")
    p.add_argument("--kneser-ney", action="store_true",
                   help="also store interpolated modified Kneser-Ney tables from the full counts (mode 'kn')")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..pack import save_pack
    from ..train import train_pack

    pack, summary = train_pack(args.tokenizer, args.corpus, args.orders, args.top_k, args.smoothing_k,
                               args.weights, args.split, args.name, progress=not args.quiet,
                               kneser_ney=args.kneser_ney)
    save_pack(pack, args.out)
    summary.pack_bytes = os.path.getsize(args.out)
    print(f"wrote {args.out}")
    for line in summary.lines():
        print("  " + line)
    return 0
