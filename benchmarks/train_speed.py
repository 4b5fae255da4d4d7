"""Training speed: tokens/s of n-gram counting (tokenisation timed separately) and peak memory.

    python benchmarks/train_speed.py [--tokenizer MODEL_DIR] [--synthetic-tokens 50000000]

Corpus: ../shared/corpora/cervantes_don_quixote.txt when present; a synthetic Zipfian stream
(vocab 49152, documents of 20-400 tokens) of the given size. Memory is the process's peak RSS
(resource.getrusage) after each corpus, inputs included: the counting kernels allocate outside
tracemalloc's view (numba), so tracemalloc would miss them. For the memory budget and larger
corpora see train_scale.py.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import resource
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DQ = os.path.join(HERE, "..", "..", "shared", "corpora", "cervantes_don_quixote.txt")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def count(docs, vocab, orders, top_k):
    from vllm_ngram_style.train import count_token_documents

    count_token_documents(docs[:50], vocab, orders, top_k)  # loads the compiled kernels once per process
    t0 = time.perf_counter()
    counter, tables = count_token_documents(docs, vocab, orders, top_k)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return counter.tokens, seconds, peak, tables


def synthetic_docs(total, vocab, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.05
    p /= p.sum()
    stream = rng.choice(vocab, size=total, p=p).astype(np.int32)
    cuts = np.cumsum(rng.integers(20, 400, size=total // 20 + 1))
    cuts = cuts[cuts < total]
    return np.split(stream, cuts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", help="model folder (default: SmolLM2 if converted, else a tiny BPE)")
    ap.add_argument("--synthetic-tokens", type=int, default=50_000_000)
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=512)
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="append the table here ('' to skip)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    tok_dir = args.tokenizer
    if tok_dir is None:
        from vllm_ngram_style.models import is_converted, smollm2_cache_dir  # converted by `models path smollm2`

        tok_dir = smollm2_cache_dir() if is_converted(smollm2_cache_dir()) else None
        if tok_dir is None:
            from vllm_ngram_style.testing.tiny import build_tiny_tokenizer

            tok_dir = build_tiny_tokenizer(tempfile.mkdtemp())
    if os.path.exists(DQ):
        from vllm_ngram_style.corpus_reader import iter_corpus_documents
        from vllm_ngram_style.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_dir)
        texts = list(iter_corpus_documents([DQ]))
        t0 = time.perf_counter()
        docs = [np.asarray(e.ids, np.int32) for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        tok_s = time.perf_counter() - t0
        n, s, peak, tables = count(docs, len(tok), args.orders, args.top_k)
        rows.append((f"Don Quixote ({os.path.basename(tok_dir.rstrip('/'))} tokenizer, V={len(tok)})", n, tok_s, s, peak,
                     [int(t.entry_tokens.size) for t in tables]))
    docs = synthetic_docs(args.synthetic_tokens, 49152)
    n, s, peak, tables = count(docs, 49152, args.orders, args.top_k)
    rows.append(("synthetic Zipf stream, V=49152", n, float("nan"), s, peak, [int(t.entry_tokens.size) for t in tables]))

    import datetime

    header = (f"\n## Training speed ({datetime.date.today()}, {_cpu_name()}, "
              f"{os.cpu_count()} cores, numpy {np.__version__})\n\n"
              f"Command: `python benchmarks/train_speed.py --synthetic-tokens {args.synthetic_tokens}` "
              f"(orders 1..{args.orders}, top-{args.top_k})\n\n"
              "| corpus | tokens | tokenising s | counting s | counting M tok/s | peak RSS MiB (process) | stored entries per order |\n"
              "|---|---|---|---|---|---|---|\n")
    table = header + "".join(f"| {name} | {n:,} | {ts:.2f} | {s:.2f} | {n / s / 1e6:.2f} | {peak / 2**20:.0f} | {ents} |\n"
                             for name, n, ts, s, peak, ents in rows)
    print(table)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(HERE, ".."))
    sys.exit(main())
