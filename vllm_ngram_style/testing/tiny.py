"""Build a tiny tokenizer and a tiny random Llama in a folder, deterministically."""
from __future__ import annotations

import os
import random

_WORDS = ("the a of and to in knight squire windmill lady road horse said sancho don quixote good "
          "great world man fair castle inn night day time sword book read village mancha king "
          "science theory result data model method market price government report news today").split()


def sample_text(n_sentences: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        out.append(" ".join(words).capitalize() + rng.choice([".", ",", "!", "?"]))
    return "\n\n".join(" ".join(out[i:i + 3]) for i in range(0, len(out), 3))


def build_tiny_tokenizer(folder: str, vocab_size: int = 320) -> str:
    """A byte-level BPE tokenizer saved as a HF fast tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    os.makedirs(folder, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample_text().split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    fast.save_pretrained(folder)
    return folder


def build_tiny_model(folder: str, seed: int = 0, hidden: int = 64, layers: int = 2) -> str:
    """A random 2-layer Llama with the tiny tokenizer, saved as float32 safetensors.

    Its vocabulary (logits width) is padded beyond the tokenizer's length on purpose, as real
    models' often are.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_tokenizer(folder)
    from transformers import AutoTokenizer

    n_tok = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed(seed)
    # head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)
    heads = max(1, hidden // 32)
    cfg = LlamaConfig(vocab_size=n_tok + 16, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
                      torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than init gives, so greedy choices are well separated
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
