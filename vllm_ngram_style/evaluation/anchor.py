"""The corpus's own text as a reference point ("anchor") for the steering frontier.

Steering moves generated text toward the corpus. How far it can go before the base model finds
the text implausible depends on how plausible the corpus's OWN text is to that model: if real
Cervantes prose has a base-model perplexity of 20 where the model's greedy answers have 2, no
steering can reach Cervantes-like style perplexities at +10% base perplexity. So we score real
corpus passages with the same metrics and on the same footing as generations: each passage is
the reply to one of the evaluation prompts (base log-probabilities conditioned on the plain
prompt, in the chat template), scored token by token from its first token.

Caveat, stated in the report: the pack was trained on the same text, so the passages' style
perplexity is in-sample (optimistic); their base perplexity is not.
"""
from __future__ import annotations

import numpy as np

from ..corpus import read_text, resolve_split, split_documents, strip_gutenberg
from .metrics import PackScorer, score_sequence

SEPARATOR = {"line": "\n", "paragraph": "\n\n", "file": "\n\n"}


def corpus_passages(tok, path: str, split: str, n_tokens: int, count: int) -> list:
    """count passages of exactly n_tokens token ids (fewer when the corpus is short), starting at
    evenly spaced documents: each is consecutive documents joined by the corpus's own separator,
    tokenised as one text, cut to n_tokens. Deterministic."""
    text = strip_gutenberg(read_text(path))
    split = resolve_split(text, split)
    docs = split_documents(text, split)
    sep = SEPARATOR[split]
    out = []
    for i in range(count):
        start = int((i + 0.5) * len(docs) / count)
        passage, j = "", start
        # ~4 characters per token in English BPE: 8 per token leaves a wide margin
        while j < len(docs) and len(passage) < 8 * n_tokens:
            passage += (sep if passage else "") + docs[j]
            j += 1
        ids = list(tok(passage, add_special_tokens=False).input_ids)[:n_tokens]
        if ids:
            out.append(ids)
    return out


def score_passages(name: str, passages: list, prompt_ids: list, forward, scorer: PackScorer, prompts) -> list:
    """One record per passage, shaped like a generation's record (family 'corpus text').
    forward: an object with .logits(prompt_ids, tokens) -> [T, V] (evaluation.backends.ForwardScorer)."""
    import torch

    records = []
    for i, ids in enumerate(passages):
        p = i % len(prompt_ids)
        z = forward.logits(prompt_ids[p], ids)  # [T, V]
        lp = torch.log_softmax(z, -1).gather(1, torch.tensor(ids)[:, None])[:, 0].double().numpy()  # [T]
        m = score_sequence(scorer, ids, lp)
        records.append({"corpus": name, "family": "corpus text", "prompt_id": prompts[p].id, **m.as_dict(),
                        "style_nll_sum": float(-np.sum(scorer.mixture_logprob(ids))),
                        "base_nll_sum": float(-np.sum(lp))})
    return records


def summarise(records: list) -> dict:
    """corpus -> per-passage medians (and n) of style ppl, base ppl and rep4."""
    out = {}
    for corpus in sorted({r["corpus"] for r in records}):
        own = [r for r in records if r["corpus"] == corpus]
        out[corpus] = {"n": len(own), **{f"{m}_median": float(np.median([r[m] for r in own]))
                                         for m in ("style_ppl", "base_ppl", "rep4", "tokens")}}
    return out


def compute_anchors(model_dir: str, corpus_texts: list, packs: dict, prompts: list, n_tokens: int,
                    count: int | None = None, forward=None, progress: bool = True) -> list:
    """Score `count` (default: one per prompt) passages of n_tokens tokens of each corpus text.
    corpus_texts: [(corpus name, path)]; packs: corpus name -> StylePack. -> records (see score_passages)."""
    from tqdm.auto import tqdm

    from ..errors import ConfigError
    from ..tokenizer import load_tokenizer
    from .backends import ForwardScorer
    from .runner import encode_prompt

    tok = load_tokenizer(model_dir)
    prompt_ids = [encode_prompt(tok, p.text) for p in prompts]
    forward = forward or ForwardScorer(model_dir, steerer=None)
    records = []
    for name, path in tqdm(corpus_texts, desc="scoring corpus text", unit="corpus", disable=not progress):
        if name not in packs:
            raise ConfigError(f"--corpus-text {name}={path}: no evaluated corpus is named {name!r} "
                              f"(names: {', '.join(sorted(packs))})")
        pack = packs[name]
        passages = corpus_passages(tok, path, pack.corpus.get("split", "auto"), n_tokens, count or len(prompts))
        records += score_passages(name, passages, prompt_ids, forward, PackScorer(pack), prompts)
    return records
