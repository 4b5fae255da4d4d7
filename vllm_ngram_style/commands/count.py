"""vllm-ngram-style count --tokenizer MODEL_DIR --corpus PATH [PATH...] --out SHARD.counts

The exact full counts of one shard of a corpus; `merge` combines shards into a pack."""
from __future__ import annotations

DEFAULT_MEMORY = "2G"


def add_corpus_arguments(p) -> None:
    """Where the corpus is, how to read it, and the memory it may take (shared with `train`)."""
    p.add_argument("--tokenizer", required=True, help="local model folder whose tokenizer the server uses")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="text files, folders (every non-hidden file below, sorted), gzip'd files (.gz), "
                        "JSONL files (*.jsonl, *.ndjson, see --jsonl-field), or don_quixote (shipped with the package)")
    p.add_argument("--split", default="auto", choices=["auto", "paragraph", "line", "file"],
                   help="what counts as a document (no n-gram crosses one); auto: paragraphs if the file has "
                        "blank lines, else lines (JSONL: paragraphs of each record)")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of the corpus files (default utf-8, a byte-order mark dropped); "
                        "e.g. cp1252, latin-1, or auto to detect it per file (charset-normalizer)")
    p.add_argument("--jsonl-field", default="text", help="field of each JSONL record holding its text (default text)")
    p.add_argument("--part", default="all", choices=["all", "train", "heldout"],
                   help="which documents to count: all (default), or the deterministic train (70%%) or heldout "
                        "(30%%) part: blocks of 20 documents, every 3rd, 6th and 9th block of 10 held out "
                        "(for evaluation on text the steering pack never saw); recorded in the output's metadata")
    p.add_argument("--memory", default=DEFAULT_MEMORY,
                   help=f"memory budget of the counting, e.g. 2G or 512M (default {DEFAULT_MEMORY}); beyond it, "
                        "sorted runs go to --tmp-dir and are merged exactly at the end")
    p.add_argument("--tmp-dir", default=None, help="folder for spilled runs and the pack being written (default: $TMPDIR or /tmp)")


def add_arguments(p) -> None:
    add_corpus_arguments(p)
    p.add_argument("--out", required=True, help="output path, e.g. part-0007.counts")
    p.add_argument("--orders", type=int, default=3, help="highest n-gram order, 1..6 (default 3); every shard must use the same")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..train import count_to_shard

    summary = count_to_shard(args.out, args.tokenizer, args.corpus, args.orders, args.split,
                             progress=not args.quiet, memory=args.memory, encoding=args.encoding,
                             jsonl_field=args.jsonl_field, spill_dir=args.tmp_dir, part=args.part)
    print(f"wrote {args.out}" + ("" if args.part == "all" else f" (part {args.part})"))
    print(f"  documents: {summary.documents:,}   tokens: {summary.tokens:,}   size: {summary.pack_bytes / 1e6:.2f} MB")
    for n, d in enumerate(summary.distinct_ngrams, 1):
        print(f"  order {n}: {d:,} distinct n-grams")
    return 0
