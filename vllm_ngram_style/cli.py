"""The ``vllm-ngram-style`` command line. Each subcommand lives in ``commands/<name>.py`` and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; they are imported lazily, so
``--help`` and ``train`` never pay for importing vLLM."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NgramStyleError

# name -> (module, one-line help)
COMMANDS = {
    "train": ("train", "count a corpus with a model's tokenizer into a .stylepack"),
    "count": ("count", "count one shard of a corpus into exact full counts (.counts), for merge"),
    "merge": ("merge", "merge count shards into a .stylepack, as if trained on all their files"),
    "generate": ("generate", "generate steered and unsteered text side by side"),
    "serve": ("serve", "start vLLM's OpenAI server with style steering"),
    "eval": ("evaluate", "sweep strength and modes; the paper's metrics, tables and plots"),
    "bench": ("bench", "throughput benchmarks"),
    "models": ("models", "fetch and convert a small real model (SmolLM2-135M) for offline use"),
    "import-arpa": ("import_arpa", "convert an ARPA n-gram model over token ids into a .stylepack"),
    "info": ("info", "show a style pack's metadata and sizes"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-ngram-style", description="Batched n-gram style steering for vLLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (mod, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module is imported
            try:
                modules[name] = importlib.import_module(f".commands.{mod}", __package__)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.endswith(f"commands.{mod}"):
                    parser.error(f"'{name}' is not available in this build")
                raise
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except NgramStyleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
