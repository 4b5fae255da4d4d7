"""Shared test helpers: random packs straight from token streams, naive formula references, and the
packs and row-by-row oracle the vLLM tests (protocol, offline engine, server, commands) share."""
from collections import Counter

import numpy as np
import torch

from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.loop_guard import capture_banned, guard_banned_tokens, restore_banned
from vllm_ngram_style.modes import compile_style
from vllm_ngram_style.pack import StylePack, default_weights, load_pack, save_pack
from vllm_ngram_style.request_args import parse_request_args
from vllm_ngram_style.kernels.reference import ReferenceSteering
from vllm_ngram_style.loop_guard import LOOP_GUARD_WINDOW
from vllm_ngram_style.train import count_token_documents, train_pack

MODES = ("exact", "paper")


def random_docs(rng, n_docs, vocab, max_len=40, zipf=1.1):
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    perm = rng.permutation(vocab)  # frequent tokens spread over the id range
    return [perm[rng.choice(vocab, size=rng.integers(1, max_len), p=p)].astype(np.int32) for _ in range(n_docs)]


def random_pack(rng, vocab, orders=3, top_k=8, n_docs=80, k=1e-3, name="s", weights=None):
    docs = random_docs(rng, n_docs, vocab)
    counter, tables = count_token_documents(docs, vocab, orders, top_k)
    pack = StylePack(tables, counter.unigram_counts, vocab, "fp-test", k, top_k,
                     weights or default_weights(orders), {}, name)
    return pack, docs


class NaiveModel:
    """Truncated counts per (order, context) computed with Counters, straight from the definitions."""

    def __init__(self, docs, orders, top_k):
        self.orders = orders
        self.full = {}  # (n, ctx) -> Counter of next tokens
        for d in docs:
            d = [int(x) for x in d]
            for n in range(1, orders + 1):
                for i in range(len(d) - n + 1):
                    self.full.setdefault((n, tuple(d[i:i + n - 1])), Counter())[d[i + n - 1]] += 1
        self.kept = {}
        for key, cnt in self.full.items():
            best = sorted(cnt.items(), key=lambda tc: (-tc[1], tc[0]))[:top_k]
            self.kept[key] = dict(best)

    def matched(self, n, history):
        """The order-n context of a history (list, newest last) if it is long enough and seen."""
        if n > 1 and len(history) < n - 1:
            return None
        ctx = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
        return ctx if (n, ctx) in self.full else None

    def log_prob(self, n, ctx, t, k, vocab):
        counts = self.kept[(n, ctx)]
        total = sum(self.full[(n, ctx)].values())  # N counts every continuation, kept or not
        return np.log((counts.get(t, 0) + k) / (total + k * vocab))


# ---- shared by the vLLM tests ------------------------------------------------------------------------

def train_test_packs(tokenizer_dir, folder):
    """Two styles counted with the served tokenizer (orders 3 and 4): {name: path}."""
    from vllm_ngram_style.testing.tiny import sample_text

    out = {}
    for name, seed, orders in (("alpha", 1, 3), ("beta", 2, 4)):
        text = folder / f"{name}.txt"
        text.write_text(sample_text(300, seed=seed))
        pack, _ = train_pack(tokenizer_dir, [str(text)], orders=orders, name=name, progress=False)
        save_pack(pack, str(folder / f"{name}.stylepack"))
        out[name] = str(folder / f"{name}.stylepack")
    return out


class Oracle:
    """Row-by-row expected logits, built independently of the steering core's variant numbering."""

    def __init__(self, packs):
        loaded = {name: load_pack(path) for name, path in packs.items()}
        self.ref = {(s, m): ReferenceSteering([compile_style(p, m, name=s)]) for s, p in loaded.items() for m in MODES}
        self.max_order = max(p.orders for p in loaded.values())

    def row(self, logits_row, extra, tokens, generated):
        """logits_row [V]; extra: the request's extra_args; tokens: prompt + output so far;
        generated: output tokens only. -> expected row."""
        out = logits_row.clone()[None]  # [1, V]
        if not extra or not extra.get("style"):
            return out[0]
        req = parse_request_args(extra, sorted({s for s, _ in self.ref}), MODES + ("kn",))
        if req.total_strength == 0:
            return out[0]
        scale = adaptive_scale(out) if req.adaptive else None  # [1], from the unsteered logits
        g = req.loop_guard
        if g:
            w = LOOP_GUARD_WINDOW
            hist = torch.tensor([([-1] * w + list(generated))[-w:]], dtype=torch.int64)
            banned = guard_banned_tokens(hist, g)
            before = capture_banned(out, banned)
        for name, weight in req.components:  # a blend: each style's own edit (one for a single style)
            ref = self.ref[(name, req.mode)]
            m = ref.max_order - 1
            ctx = ([-1] * m + list(tokens))[len(tokens):] if m else []  # the last m tokens, -1 padded
            strength = torch.tensor([weight], dtype=torch.float32)
            if scale is not None:
                strength = strength * scale
            ref.apply(out, torch.tensor([0]), strength, torch.tensor([ctx], dtype=torch.int64).reshape(1, m))
        if g:  # guarded tokens: unsteered logit minus the raw (not adaptive) strength x loop penalty
            penalty = float(req.total_strength) * float(req.loop_penalty)
            restore_banned(out, banned, before - torch.tensor(penalty, dtype=torch.float32))
        return out[0]


def greedy_reference(model_dir, packs):
    """A transformers greedy loop over the tiny model that applies the oracle's steering to every step's
    logits: -> run(prompt ids, extra_args, max_tokens) -> generated ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    oracle = Oracle(packs)

    @torch.no_grad()
    def run(prompt, extra, max_tokens):
        ids, generated = list(prompt), []
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()  # [V]
            tok = int(torch.argmax(oracle.row(logits, extra, ids, generated)))
            ids.append(tok)
            generated.append(tok)
        return generated

    return run
