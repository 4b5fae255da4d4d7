"""Models and style packs for the end-to-end benchmark: real packs counted with a model's own
tokenizer (cached), or the tiny random Llama with packs from its sample text; prompt token streams."""
from __future__ import annotations

import os

# Styles for real-model runs: name -> corpus file in the corpora folder (--corpora); quixote falls
# back to the corpus shipped with the package.
REAL_STYLES = {"quixote": "cervantes_don_quixote.txt", "austen": "austen_six_novels.txt",
               "bible": "bible_kjv.txt", "news": "brown_news.txt"}
BUILTIN_STYLES = {"quixote": "don_quixote"}


def corpus_for(name: str, corpora: str | None) -> str | None:
    """The corpus file of a benchmark style: in the corpora folder, else a built-in corpus, else None."""
    from ..corpus import builtin_corpus_path

    if corpora and os.path.exists(os.path.join(corpora, REAL_STYLES[name])):
        return os.path.join(corpora, REAL_STYLES[name])
    return builtin_corpus_path(BUILTIN_STYLES[name]) if name in BUILTIN_STYLES else None


def bench_pack_dir(model_dir: str) -> str:
    from ..models import cache_root
    from ..tokenizer import load_tokenizer, tokenizer_fingerprint

    fp = tokenizer_fingerprint(load_tokenizer(model_dir))
    root = os.path.join(os.path.dirname(cache_root()), "bench-packs")
    return os.path.join(root, f"{os.path.basename(os.path.normpath(model_dir))}-{fp[:12]}")


def real_packs(model_dir: str, names, corpora: str | None = None, folder: str | None = None, log=print) -> dict:
    """{name: pack path} for styles of REAL_STYLES, counted with the model's tokenizer (cached)."""
    from ..errors import ConfigError
    from ..pack import save_pack
    from ..train import train_pack

    folder = folder or bench_pack_dir(model_dir)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name in names:
        path = os.path.join(folder, f"{name}.stylepack")
        if not os.path.exists(path):
            corpus = corpus_for(name, corpora)
            if corpus is None:
                raise ConfigError(f"no corpus for style {name!r}: give --corpora DIR holding {REAL_STYLES[name]}, "
                                  "or packs with --style NAME=PACK")
            log(f"training {name} from {REAL_STYLES[name]} (cached in {folder}) ...")
            pack, _ = train_pack(model_dir, [corpus], name=name, progress=False)
            save_pack(pack, path)
        out[name] = path
    return out


def tiny_model_and_packs(folder: str, n_styles: int) -> tuple[str, dict]:
    """The tiny random Llama and n_styles packs counted from its sample text (seeds differ)."""
    from ..pack import save_pack
    from ..testing.tiny import build_tiny_model, sample_text
    from ..train import train_pack

    model = os.path.join(folder, "tiny_model")
    if not os.path.exists(os.path.join(model, "config.json")):
        build_tiny_model(model)
    out = {}
    for i in range(n_styles):
        name = f"tiny{i}"
        path = os.path.join(folder, f"{name}.stylepack")
        if not os.path.exists(path):
            text = os.path.join(folder, f"{name}.txt")
            with open(text, "w") as fh:
                fh.write(sample_text(400, seed=100 + i))
            pack, _ = train_pack(model, [text], name=name, progress=False)
            save_pack(pack, path)
        out[name] = path
    return model, out


def token_stream(model_dir: str, corpus: str | None, n_tokens: int = 50_000) -> list[int]:
    """Natural-text token ids for prompts: the corpus (or the tiny sample text) tokenised."""
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    if corpus and os.path.exists(corpus):
        from ..corpus import read_text, strip_gutenberg

        text = strip_gutenberg(read_text(corpus))[: n_tokens * 8]
    else:
        from ..testing.tiny import sample_text

        text = sample_text(2000, seed=7)
    return tok.encode(text, add_special_tokens=False)[:n_tokens]
