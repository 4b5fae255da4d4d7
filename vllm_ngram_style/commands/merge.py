"""vllm-ngram-style merge SHARD.counts [SHARD.counts ...] --out NAME.stylepack

Adds the counts of shards written by `count` (same tokenizer, orders and split) and writes a pack,
bit-identical to training on all their files at once, in the order given; or, with --counts, one
shard holding the sum (to merge in stages)."""
from __future__ import annotations

from .train import add_pack_arguments


def add_arguments(p) -> None:
    p.add_argument("shards", nargs="+", help="count shards (.counts files written by `count`)")
    p.add_argument("--out", required=True, help="output path: a .stylepack, or with --counts a merged shard")
    add_pack_arguments(p)
    p.add_argument("--counts", action="store_true", help="write the merged counts as one shard instead of a pack")
    p.add_argument("--memory", default="2G", help="memory budget of the merge, e.g. 2G (default 2G)")
    p.add_argument("--no-verify", action="store_true", help="skip checking each shard's checksum (one read of each)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..merging import merge_shards

    summary = merge_shards(args.shards, args.out, args.top_k, args.smoothing_k, args.weights, args.name,
                           args.memory, counts_only=args.counts, verify=not args.no_verify,
                           progress=not args.quiet)
    print(f"wrote {args.out}")
    for line in summary.lines()[:1] + summary.lines()[2:]:
        print("  " + line)
    return 0
