"""The evaluation prompt set (vllm_ngram_style/data/eval_prompts.json) and style instructions."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import ConfigError

DATA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "eval_prompts.json")
# Prompts that are NOT evaluation prompts: the model's unsteered replies to them are the style
# classifiers' negative examples, so that no evaluated generation is a training example.
NEGATIVE_PROMPTS_FILE = os.path.join(os.path.dirname(DATA_FILE), "classifier_prompts.json")


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str


def load_prompt_data(path: str | None = None) -> dict:
    path = path or DATA_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file {path!r}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list) or not data["prompts"]:
        raise ConfigError(f"prompt file {path!r} needs a non-empty 'prompts' list")
    return data


def load_prompts(path: str | None = None, limit: int | None = None, per_category: int | None = None) -> list:
    """Prompts in file order; per_category keeps the first n of each category (balanced subsets),
    limit then keeps the first n overall."""
    data = load_prompt_data(path)
    prompts = []
    for i, p in enumerate(data["prompts"]):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise ConfigError(f"prompt #{i} must be an object with a 'text' string")
        prompts.append(Prompt(str(p.get("id", f"p{i}")), str(p.get("category", "")), p["text"]))
    if per_category is not None:
        seen: dict = {}
        kept = []
        for p in prompts:
            if seen.get(p.category, 0) < per_category:
                kept.append(p)
                seen[p.category] = seen.get(p.category, 0) + 1
        # interleave categories so that a later `limit` stays balanced
        cats = list(dict.fromkeys(p.category for p in kept))
        by_cat = {c: [p for p in kept if p.category == c] for c in cats}
        prompts = [by_cat[c][i] for i in range(per_category) for c in cats if i < len(by_cat[c])]
    return prompts[:limit] if limit is not None else prompts


def load_negative_prompts(limit: int | None = None) -> list:
    """The built-in non-evaluation prompts (40; categories interleaved, so a limit stays balanced)."""
    prompts = load_prompts(NEGATIVE_PROMPTS_FILE)
    cats = list(dict.fromkeys(p.category for p in prompts))
    by_cat = {c: [p for p in prompts if p.category == c] for c in cats}
    longest = max(len(v) for v in by_cat.values())
    mixed = [by_cat[c][i] for i in range(longest) for c in cats if i < len(by_cat[c])]
    return mixed[:limit] if limit is not None else mixed


def style_instruction(corpus_name: str, path: str | None = None) -> str:
    """The prompt-only baseline's instruction for a corpus (by file stem), or the generic one."""
    data = load_prompt_data(path)
    table = data.get("style_instructions", {})
    if corpus_name in table:
        return table[corpus_name]
    return data.get("default_style_instruction", "Write in the style of {corpus}.").format(corpus=corpus_name)
