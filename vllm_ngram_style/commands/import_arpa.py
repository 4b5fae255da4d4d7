"""vllm-ngram-style import-arpa FILE.arpa --tokenizer MODEL_DIR --out NAME.stylepack

The ARPA file's words are the model's token ids (see vllm_ngram_style/arpa.py); the pack it
writes steers with mode "kn" (the ARPA model's own probabilities, up to a per-row constant)."""
from __future__ import annotations

import os


def add_arguments(p) -> None:
    p.add_argument("arpa", help="ARPA file (optionally .gz) whose words are token ids, e.g. from KenLM lmplz")
    p.add_argument("--tokenizer", required=True, help="local model folder whose tokenizer produced the ids")
    p.add_argument("--out", required=True, help="output path, e.g. quixote.stylepack")
    p.add_argument("--name", default="", help="style name stored in the pack (default: ARPA file name)")
    p.add_argument("--top-k", type=int, default=None,
                   help="keep each context's K most probable continuations (orders >= 2); default: all")


def run(args) -> int:
    from ..arpa import arpa_to_pack
    from ..pack import save_pack
    from ..tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size

    tok = load_tokenizer(args.tokenizer)
    pack = arpa_to_pack(args.arpa, tokenizer_vocab_size(tok), tokenizer_fingerprint(tok), args.name, args.top_k)
    save_pack(pack, args.out)
    model = pack.backoff
    print(f"wrote {args.out} (use mode 'kn')")
    for o in model.orders:
        print(f"  order {o.order}: {o.num_contexts:,} contexts, {o.entry_tokens.shape[0]:,} entries")
    dropped = {k: v for k, v in model.info.get("dropped", {}).items() if v}
    if dropped:
        print(f"  dropped n-grams (never usable mid-stream): {dropped}")
    if not model.info.get("unk_floor"):
        print("  note: no <unk> unigram; unlisted token ids get the smallest listed unigram probability")
    print(f"  pack size: {os.path.getsize(args.out) / 1e6:.2f} MB")
    return 0
