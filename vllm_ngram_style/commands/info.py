"""vllm-ngram-style info PACK: metadata and sizes of a style pack."""
from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("pack", help="path to a .stylepack")


def run(args) -> int:
    from ..pack import load_pack

    pack = load_pack(args.pack)
    meta = pack.metadata()
    meta["stored"] = [{"order": t.order, "contexts": int(t.context_total.shape[0]),
                       "entries": int(t.entry_tokens.shape[0])} for t in pack.tables]
    print(json.dumps(meta, indent=2))
    return 0
