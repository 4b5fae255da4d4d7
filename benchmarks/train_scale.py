"""Training at scale: tokens/s and peak RSS against the memory budget, synthetic and real text.

    python benchmarks/train_scale.py --synthetic 10M 100M [--memory 2G]      # token ids, no tokenizer
    python benchmarks/train_scale.py --text 10M --tokenizer MODEL_DIR         # real text, end to end
    python benchmarks/train_scale.py --synthetic 1B --keep-data               # the one-off run

Synthetic corpus: a Zipf(1.05) stream over V=49152 token ids in documents of 20-400 tokens
(i.i.d. tokens: the worst case for distinct n-grams), generated once per size and seed into
$TMPDIR as raw int32 files, then read back in 4M-token pieces and counted with the pack written
exactly as `train` writes it (NgramCounter under the budget, then pack_writer). Real text: the
corpora of ../shared/corpora (or --text-files), repeated until the token target, through the
whole `train` pipeline (reader, tokenizer thread, counter, pack writer). Each size runs in a fresh
child process, so its peak RSS (resource.getrusage, ru_maxrss) is its own; the table says how it
compares with the budget (the goal: at most budget + 500 MB).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "corpora")
VOCAB = 49152
PIECE = 4_000_000  # tokens read and fed per step


def parse_count(text: str) -> int:
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
    text = text.strip().upper()
    return int(float(text[:-1]) * mult[text[-1]]) if text[-1] in mult else int(float(text))


def synthetic_files(tokens: int, seed: int, folder: str) -> tuple[str, str]:
    """(ids file [tokens] int32, lengths file [D] int32), generated once."""
    stem = os.path.join(folder, f"zipf_v{VOCAB}_s{seed}_{tokens}")
    if os.path.exists(stem + ".lengths"):
        return stem + ".ids", stem + ".lengths"
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, VOCAB + 1) ** 1.05)
    cdf /= cdf[-1]
    with open(stem + ".ids.tmp", "wb") as ids:
        for start in range(0, tokens, 16_000_000):
            m = min(16_000_000, tokens - start)
            np.minimum(np.searchsorted(cdf, rng.random(m)), VOCAB - 1).astype(np.int32).tofile(ids)
    lengths = rng.integers(20, 400, size=tokens // 20 + 2).astype(np.int64)
    ends = np.cumsum(lengths)
    cut = int(np.searchsorted(ends, tokens))
    lengths = lengths[:cut + 1]
    lengths[-1] -= int(ends[cut] - tokens)  # the last document ends with the stream
    lengths.astype(np.int32).tofile(stem + ".lengths.tmp")
    os.replace(stem + ".ids.tmp", stem + ".ids")
    os.replace(stem + ".lengths.tmp", stem + ".lengths")
    return stem + ".ids", stem + ".lengths"


def run_synthetic(tokens: int, memory: str, seed: int, folder: str, orders: int) -> dict:
    from vllm_ngram_style.counting import NgramCounter
    from vllm_ngram_style.pack_writer import write_pack_streaming
    from vllm_ngram_style.train import parse_memory

    ids_path, len_path = synthetic_files(tokens, seed, folder)
    lengths = np.fromfile(len_path, dtype=np.int32).astype(np.int64)  # [D]: 8 bytes a document
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    counter = NgramCounter(orders, VOCAB, memory_bytes=parse_memory(memory), spill_dir=folder)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    doc = 0
    with open(ids_path, "rb") as fh:
        while doc < lengths.size:  # whole documents, about PIECE tokens at a time
            stop = max(doc + 1, int(np.searchsorted(offsets, offsets[doc] + PIECE)))
            stop = min(stop, lengths.size)
            stream = np.fromfile(fh, dtype=np.int32, count=int(offsets[stop] - offsets[doc]))
            counter.add_batch(stream, lengths[doc:stop])
            doc = stop
    counter.finish_input()
    t1 = time.perf_counter()
    spill_bytes = sum(os.path.getsize(os.path.join(counter._folder, f)) for f in os.listdir(counter._folder)) \
        if counter._folder else 0
    out = os.path.join(folder, f"bench_{tokens}.stylepack")
    try:
        write_pack_streaming(out, counter.blocks, orders, counter.bits, counter.unigram_counts, VOCAB,
                             "synthetic", 1e-3, 512, [0.1, 0.3, 0.6][:orders] if orders == 3 else [1.0] * orders,
                             {"files": ["synthetic"], "documents": counter.documents, "tokens": counter.tokens,
                              "split": "synthetic"}, "synthetic", counter.threads)
    finally:
        counter.close()
    t2 = time.perf_counter()
    pack_bytes = os.path.getsize(out)
    os.remove(out)
    return {"kind": "synthetic", "tokens": counter.tokens, "count_s": t1 - t0, "pack_s": t2 - t1,
            "spills": counter.spills, "spill_bytes": spill_bytes, "pack_bytes": pack_bytes,
            "chunk_tokens": counter.chunk_tokens, "rss_start": rss_before}


def run_text(tokens: int, memory: str, tokenizer: str, files: list[str], folder: str, orders: int) -> dict:
    from vllm_ngram_style.tokenizer import load_tokenizer
    from vllm_ngram_style.token_stream import encode_documents
    from vllm_ngram_style.corpus_reader import iter_corpus_documents
    from vllm_ngram_style.train import train_to_file

    tok = load_tokenizer(tokenizer)
    # one pass over the files, tokenizer alone (documents read first): how many passes reach the
    # target, and what the tokenizer allows by itself on this machine
    docs = [list(iter_corpus_documents([f])) for f in files]
    t0 = time.perf_counter()
    per_pass = sum(int(encode_documents(tok, d)[1].sum()) for d in docs)
    tokenizer_rate = per_pass / (time.perf_counter() - t0)
    del docs
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    passes = max(1, round(tokens / per_pass))
    out = os.path.join(folder, f"bench_text_{tokens}.stylepack")
    t0 = time.perf_counter()
    summary = train_to_file(out, tokenizer, files * passes, orders, progress=False, tokenizer=tok,
                            memory=memory, spill_dir=folder)
    t1 = time.perf_counter()
    os.remove(out)
    return {"kind": f"text x{passes}", "tokens": summary.tokens, "count_s": t1 - t0, "pack_s": 0.0,
            "spills": summary.spills, "spill_bytes": 0, "pack_bytes": summary.pack_bytes, "chunk_tokens": 0,
            "rss_start": rss_before, "count_only_s": summary.count_seconds, "wait_s": summary.tokenize_seconds,
            "tokenizer_alone_tok_s": tokenizer_rate,
            "tokenizer_threads": "1" if os.environ.get("TOKENIZERS_PARALLELISM") == "false" else "all cores"}


def run_in_memory(tokens: int, seed: int, folder: str, orders: int) -> dict:
    """The in-memory API (train.count_token_documents: counts and top-K tables, no budget), on the
    same synthetic ids: what --baseline-src compares between two source trees."""
    from vllm_ngram_style.train import count_token_documents

    ids_path, len_path = synthetic_files(tokens, seed, folder)
    lengths = np.fromfile(len_path, dtype=np.int32).astype(np.int64)
    docs = np.split(np.fromfile(ids_path, dtype=np.int32), np.cumsum(lengths)[:-1])
    count_token_documents(docs[:50], VOCAB, orders, 512)  # one-time costs (compiled kernels) excluded
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cpu0, t0 = time.process_time(), time.perf_counter()
    counter, _ = count_token_documents(docs, VOCAB, orders, 512)
    return {"kind": "in-memory", "tokens": counter.tokens, "count_s": time.perf_counter() - t0, "pack_s": 0.0,
            "spills": 0, "spill_bytes": 0, "pack_bytes": 0, "chunk_tokens": 0, "rss_start": rss_before,
            "count_cpu_s": time.process_time() - cpu0}


def child(args) -> int:
    if args.kind == "generate":
        synthetic_files(args.one, args.seed, args.data_dir)
        return 0
    if args.kind.startswith("in-memory"):
        row = run_in_memory(args.one, args.seed, args.data_dir, args.orders)
        row["kind"] = args.kind
        usage = resource.getrusage(resource.RUSAGE_SELF)
        row["peak_rss"], row["cpu_s"] = usage.ru_maxrss * 1024, row["count_cpu_s"]
        print("RESULT " + json.dumps(row))
        return 0
    if args.kind == "synthetic":
        row = run_synthetic(args.one, args.memory, args.seed, args.data_dir, args.orders)
    else:
        row = run_text(args.one, args.memory, args.tokenizer, args.text_files, args.data_dir, args.orders)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row["peak_rss"] = usage.ru_maxrss * 1024
    row["cpu_s"] = usage.ru_utime + usage.ru_stime  # of the whole child, data generation excluded (cached)
    print("RESULT " + json.dumps(row))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", nargs="*", default=[], help="sizes, e.g. 10M 100M 1B")
    ap.add_argument("--text", nargs="*", default=[], help="sizes of the real-text runs (needs --tokenizer)")
    ap.add_argument("--tokenizer", help="model folder for --text")
    ap.add_argument("--text-files", nargs="+", help="real-text files (default: every .txt of ../shared/corpora)")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("TMPDIR", "/tmp"), help="synthetic data, spills and packs")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated synthetic ids for a later run")
    ap.add_argument("--in-memory", nargs="*", default=[],
                    help="sizes for the in-memory API (count_token_documents, no budget) on synthetic ids")
    ap.add_argument("--baseline-src", help="a source tree of another version (e.g. `git archive` of a commit): "
                    "each --in-memory size runs with it too, alternating, for a same-run ratio")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every job this many times")
    ap.add_argument("--serial-tokenizer", action="store_true",
                    help="text runs with TOKENIZERS_PARALLELISM=false (one tokenizer thread), to compare")
    ap.add_argument("--results", default="", help="append the table to this file (e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--one", type=parse_count, help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return child(args)
    if args.text and not args.tokenizer:
        ap.error("--text needs --tokenizer")
    files = args.text_files or sorted(os.path.join(SHARED, f) for f in os.listdir(SHARED) if f.endswith(".txt")) \
        if args.text else []
    rows = []
    jobs = [("synthetic", s) for s in args.synthetic] + [("text", s) for s in args.text]
    for size in args.in_memory:
        jobs += [("in-memory (this tree)", size)] + ([("in-memory (baseline)", size)] if args.baseline_src else [])
    jobs = jobs * args.rounds
    for kind, size in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", size, "--kind", kind, "--memory", args.memory,
               "--orders", str(args.orders), "--seed", str(args.seed), "--data-dir", args.data_dir]
        if kind == "text":
            cmd += ["--tokenizer", args.tokenizer, "--text-files", *files]
        else:  # generated (once) by a child of its own: ru_maxrss carries over fork and exec, so this
            # process stays small and the measuring child's peak is the counting's alone
            subprocess.run([sys.executable, os.path.abspath(__file__), "--one", size, "--kind", "generate",
                            "--seed", str(args.seed), "--data-dir", args.data_dir], check=True,
                           env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..")))
        load_before = os.getloadavg()
        env = dict(os.environ, PYTHONPATH=os.path.join(HERE, ".."))
        if kind == "in-memory (baseline)":  # the other tree's package, not this one's
            env.update(PYTHONPATH=os.path.abspath(args.baseline_src), TRAIN_SCALE_KEEP_PATH="1")
        if kind == "text":
            env["TOKENIZERS_PARALLELISM"] = "false" if args.serial_tokenizer else "true"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        row = json.loads(lines[-1][7:])
        row["load"] = (load_before, os.getloadavg())
        rows.append(row)
        print(row, flush=True)
        if kind == "synthetic" and not args.keep_data:
            for suffix in (".ids", ".lengths"):
                path = os.path.join(args.data_dir, f"zipf_v{VOCAB}_s{args.seed}_{parse_count(size)}{suffix}")
                if os.path.exists(path):
                    os.remove(path)
    budget = parse_memory_text(args.memory)
    table = (f"\n## Training at scale ({datetime.date.today()}, {_cpu_name()}, {os.cpu_count()} cores, "
             f"numpy {np.__version__})\n\n"
             f"Command: `python benchmarks/train_scale.py {' '.join(sys.argv[1:])}` (orders 1..{args.orders}, top-512, "
             f"--memory {args.memory})\n\n"
             "| corpus | tokens | counting s | counting M tok/s | merge + pack s | total M tok/s | CPU s | spills | "
             "spilled GB | pack MB | peak RSS MiB | RSS - budget MiB | load avg before / after |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        total = r["count_s"] + r["pack_s"]
        table += (f"| {r['kind']} | {r['tokens']:,} | {r['count_s']:.1f} | {r['tokens'] / r['count_s'] / 1e6:.2f} | "
                  f"{r['pack_s']:.1f} | {r['tokens'] / total / 1e6:.2f} | {r['cpu_s']:.0f} | {r['spills']} | {r['spill_bytes'] / 1e9:.2f} | "
                  f"{r['pack_bytes'] / 1e6:.0f} | {r['peak_rss'] / 2**20:.0f} | {(r['peak_rss'] - budget) / 2**20:+.0f} | "
                  f"{r['load'][0][0]:.1f} / {r['load'][1][0]:.1f} |\n")
    for r in rows:
        if "tokenizer_alone_tok_s" in r:
            table += (f"\n{r['kind']} ({r['tokens']:,} tokens, tokenizer threads: {r['tokenizer_threads']}): tokenizer alone "
                      f"{r['tokenizer_alone_tok_s'] / 1e6:.2f}M tok/s; in the pipeline the main thread spent "
                      f"{r['count_only_s']:.1f} s counting and {r['wait_s']:.1f} s waiting for batches.\n")
    print(table)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(table)
    return 0


def parse_memory_text(text: str) -> int:
    from vllm_ngram_style.train import parse_memory

    return parse_memory(text)


if __name__ == "__main__":
    if not os.environ.get("TRAIN_SCALE_KEEP_PATH"):
        sys.path.insert(0, os.path.join(HERE, ".."))
    sys.exit(main())
