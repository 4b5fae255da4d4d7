"""Aggregates of per-generation records: per (corpus, decoding, family, lambda), over prompts, the
mean and the MEDIAN of each per-prompt metric (a few degenerate generations can dominate a mean of
perplexities), pooled (token-weighted) style and base perplexities; each family's curve; and the
goal checks on them.

style_ppl is IN-SAMPLE (under the steering pack's own counts, the paper's measure: steering lowers
it partly by construction); heldout_style_ppl is under a pack of held-out documents and
p_style_<classifier> a style classifier's P(style) (evaluation/style_classifier.py). Records of
older runs lack the held-out fields: their aggregates are nan, reported as n/a."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

METRICS = ("style_ppl", "base_ppl", "js_bits", "unigram_overlap", "bigram_seen", "rep4", "tokens",
           "heldout_style_ppl", "p_style_tfidf", "p_style_minilm")
STYLE_LABELS = {"style_ppl": "in-sample style ppl", "heldout_style_ppl": "held-out style ppl"}
# the classifier goals: steering alone >= prompt-only; prompt + steering >= prompt-only + 0.2; CV accuracy
CLASSIFIER_GOAL = {"combined_gain": 0.2, "cv_accuracy": 0.9}
# the acceptance rule for the best mode, on per-prompt medians
GOAL = {"style_cut": 0.5, "base_rel": 0.10, "rep4_abs": 0.05, "width": 0.2}
FAMILY_ORDER = ("unsteered", "prompt", "paper", "exact", "exact+adaptive", "best", "prompt+best")
FAMILY_STYLE = {"paper": ("tab:red", "-"), "exact": ("tab:blue", "-"), "exact+adaptive": ("tab:green", "-"),
                "best": ("tab:purple", "-"), "prompt+best": ("tab:orange", "--")}


def _nan_stat(fn, values):
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(fn(arr)) if arr.size else float("nan")


def aggregate(records: list) -> list:
    groups = defaultdict(list)
    for r in records:
        groups[(r["corpus"], r["decoding"], r["family"], r["lambda"])].append(r)
    rows = []
    fam_rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    for key in sorted(groups, key=lambda k: (k[0], k[1], fam_rank.get(k[2], 99), k[3])):
        recs = groups[key]
        row = {"corpus": key[0], "decoding": key[1], "family": key[2], "lambda": key[3], "n": len(recs)}
        for m in METRICS:
            vals = [r.get(m) for r in recs]
            row[f"{m}_mean"] = _nan_stat(np.mean, vals)
            row[f"{m}_median"] = _nan_stat(np.median, vals)
        toks = sum(r["tokens"] for r in recs)
        row["style_ppl_pooled"] = math.exp(sum(r["style_nll_sum"] for r in recs) / toks) if toks else float("nan")
        row["base_ppl_pooled"] = math.exp(sum(r["base_nll_sum"] for r in recs) / toks) if toks else float("nan")
        held = [r.get("heldout_style_nll_sum") for r in recs]
        row["heldout_style_ppl_pooled"] = (math.exp(sum(held) / toks) if toks and all(h is not None for h in held)
                                           else float("nan"))
        rows.append(row)
    return rows


def family_curve(rows: list, corpus: str, decoding: str, family: str) -> list:
    """Rows of one family in lambda order, with the unsteered row as its lambda-0 point
    (prompt+best starts from the prompt-only baseline)."""
    start = "prompt" if family.startswith("prompt+") else "unsteered"
    base = [r for r in rows if r["corpus"] == corpus and r["decoding"] == decoding and r["family"] == start]
    own = [r for r in rows if r["corpus"] == corpus and r["decoding"] == decoding and r["family"] == family]
    return sorted(base + own, key=lambda r: r["lambda"])


def has_metric(rows: list, metric: str, stat: str = "median") -> bool:
    return any(math.isfinite(r.get(f"{metric}_{stat}", float("nan"))) for r in rows)


def goal_check(rows: list, family: str = "best", stat: str = "median", max_lambda: float | None = None,
               style: str = "style_ppl") -> list:
    """For each corpus and decoding: the lambdas where the family cuts style ppl (``style``:
    style_ppl in-sample, or heldout_style_ppl) by >= 50% vs lambda 0 while base ppl stays within
    +10% and rep4 within +0.05 of unsteered, and the widest contiguous run of such lambdas
    (consecutive points of the sweep). A corpus whose lambda-0 point lacks the measure is left out."""
    out = []
    for corpus in sorted({r["corpus"] for r in rows}):
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            curve = [r for r in family_curve(rows, corpus, dec, family)
                     if max_lambda is None or r["lambda"] <= max_lambda + 1e-9]
            if not curve or curve[0]["lambda"] != 0 or not math.isfinite(curve[0].get(f"{style}_{stat}", float("nan"))):
                continue
            b = curve[0]
            ok = []
            for r in curve[1:]:
                passed = (r[f"{style}_{stat}"] <= (1 - GOAL["style_cut"]) * b[f"{style}_{stat}"]
                          and r[f"base_ppl_{stat}"] <= (1 + GOAL["base_rel"]) * b[f"base_ppl_{stat}"]
                          and r[f"rep4_{stat}"] <= b[f"rep4_{stat}"] + GOAL["rep4_abs"])
                ok.append((r["lambda"], passed))
            best_run, run = (), []
            for lam, passed in ok + [(None, False)]:
                if passed:
                    run.append(lam)
                else:
                    if run and (not best_run or run[-1] - run[0] > best_run[-1] - best_run[0]):
                        best_run = tuple(run)
                    run = []
            width = (best_run[-1] - best_run[0]) if best_run else 0.0
            out.append({"corpus": corpus, "decoding": dec, "family": family, "stat": stat, "max_lambda": max_lambda,
                        "style": style,
                        "passing_lambdas": [lam for lam, p in ok if p], "widest_run": list(best_run),
                        "width": round(width, 4), "met": bool(best_run) and width >= GOAL["width"] - 1e-9})
    return out


def within_budget(row: dict, unsteered: dict, stat: str = "median") -> bool:
    """Base ppl within +10% and rep4 within +0.05 of the unsteered run (the goals' fluency budget)."""
    return (row[f"base_ppl_{stat}"] <= (1 + GOAL["base_rel"]) * unsteered[f"base_ppl_{stat}"]
            and not row[f"rep4_{stat}"] > unsteered[f"rep4_{stat}"] + GOAL["rep4_abs"])


def classifier_goal_check(rows: list, classifiers: list, stat: str = "median", family: str = "best") -> list:
    """For each corpus, decoding and classifier: P(style) of prompt-only; the highest P(style) of
    ``family`` alone and of prompt+``family`` among strengths within the fluency budget; and the
    goals: steering alone >= prompt-only, prompt + steering >= prompt-only + 0.2, CV accuracy >= 0.9."""
    cv = {(c["corpus"], c["classifier"]): c["cv_balanced_accuracy"] for c in classifiers or []}
    out = []
    for (corpus, kind), acc in sorted(cv.items()):
        key = f"p_style_{kind}_{stat}"
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            sel = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec]
            base = [r for r in sel if r["family"] == "unsteered"]
            prompt = [r for r in sel if r["family"] == "prompt"]
            if not base or not prompt:
                continue

            def best_of(fam):
                pts = [(r[key], r["lambda"]) for r in sel if r["family"] == fam and r["lambda"] > 0
                       and math.isfinite(r.get(key, float("nan"))) and within_budget(r, base[0], stat)]
                return max(pts) if pts else (float("nan"), None)

            p_prompt = prompt[0].get(key, float("nan"))
            alone, alone_lam = best_of(family)
            combo, combo_lam = best_of(f"prompt+{family}")
            out.append({"corpus": corpus, "decoding": dec, "classifier": kind, "cv_balanced_accuracy": acc,
                        "p_unsteered": base[0].get(key, float("nan")), "p_prompt": p_prompt,
                        "p_steer_alone": alone, "steer_alone_lambda": alone_lam,
                        "p_prompt_steer": combo, "prompt_steer_lambda": combo_lam,
                        "steer_alone_met": bool(alone >= p_prompt),
                        "combined_met": bool(combo >= p_prompt + CLASSIFIER_GOAL["combined_gain"]),
                        "cv_met": bool(acc >= CLASSIFIER_GOAL["cv_accuracy"])})
            out[-1]["met"] = out[-1]["steer_alone_met"] and out[-1]["combined_met"] and out[-1]["cv_met"]
    return out
