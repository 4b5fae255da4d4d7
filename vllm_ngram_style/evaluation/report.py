"""Write an evaluation's CSV, JSON, PNG plots and markdown summary (aggregates: aggregate.py)."""
from __future__ import annotations

import csv
import json
import math
import os

from .aggregate import (CLASSIFIER_GOAL, FAMILY_STYLE, GOAL, METRICS, STYLE_LABELS, aggregate,  # noqa: F401
                        classifier_goal_check, family_curve, goal_check, has_metric)
from .frontier import markdown_section, plot_frontier

CLASSIFIER_LABELS = {"tfidf": "TF-IDF word+char n-grams", "minilm": "MiniLM sentence embeddings"}


def write_csv(rows: list, path: str) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def plot_corpus(rows: list, corpus: str, path: str, stat: str = "median") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decs = sorted({r["decoding"] for r in rows if r["corpus"] == corpus})
    panels = [("style_ppl", "in-sample style perplexity", True)]
    panels += [("heldout_style_ppl", "held-out style perplexity", True)] if has_metric(rows, "heldout_style_ppl") else []
    panels += [(f"p_style_{k}", f"P(style), {k}", False) for k in CLASSIFIER_LABELS if has_metric(rows, f"p_style_{k}")]
    panels += [("base_ppl", "base-model perplexity", True), ("rep4", "4-gram repetition rate", False),
               ("js_bits", "JS divergence (bits)", False)]
    fig, axes = plt.subplots(len(decs), len(panels), figsize=(4.2 * len(panels), 3.4 * len(decs)), squeeze=False)
    for i, dec in enumerate(decs):
        prompt_rows = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == "prompt"]
        for j, (metric, title, log) in enumerate(panels):
            ax = axes[i][j]
            for fam, (color, ls) in FAMILY_STYLE.items():
                curve = family_curve(rows, corpus, dec, fam)
                if len(curve) < 2:
                    continue
                ax.plot([r["lambda"] for r in curve], [r[f"{metric}_{stat}"] for r in curve], ls, color=color,
                        marker="o", ms=3, label=fam)
            for r in prompt_rows:
                ax.axhline(r[f"{metric}_{stat}"], color="gray", ls=":", label="prompt only")
            if not any(math.isfinite(r[f"{metric}_{stat}"]) for r in rows
                       if r["corpus"] == corpus and r["decoding"] == dec and r["family"] != "unsteered"):
                ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(f"{title} ({dec})", fontsize=9)
            ax.set_xlabel("lambda")
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{corpus}: per-prompt {stat}s", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"  # not measured in this run (e.g. an older results.json without held-out fields)
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def markdown(result: dict, rows: list, goals: dict, table_lambdas=(0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0),
             anchors: dict | None = None) -> str:
    """The summary; goals: {"heldout": [...], "in_sample": [...], "classifier": [...]} (write_report)."""
    meta = result["meta"]
    s = meta["settings"]
    lines = [f"# Style steering evaluation", "",
             f"- model: `{os.path.basename(str(meta['model']).rstrip('/'))}`, backend: {meta['backend']}, "
             f"machine: {meta['machine']}",
             f"- prompts: {len(meta['prompts'])}, max new tokens: {s['max_tokens']}, decodings: "
             f"{', '.join(s['decodings'])} (sampling: top-p {s['top_p']}, T {s['temperature']}, seed {s['seed']} + prompt index)",
             f"- lambdas: {', '.join(f'{x:g}' for x in s['lambdas'])}; best = exact + adaptive + loop guard "
             f"{s['loop_guard']}" + (f" with loop penalty {s['loop_penalty']:g}" if s.get("loop_penalty") else ""),
             f"- base ppl: {meta['base_ppl_source']}; JS: {meta['js_source']}",
             "- cells: per-prompt median (mean in the CSV/JSON)", ""]
    for t in meta.get("timings", []):
        lines.append(f"- {t['corpus']}: {t['sequences']} sequences, {t['generated_tokens']:,} tokens generated "
                     f"in {t['generate_seconds']} s ({t['tokens_per_second']} tok/s)")
    lines.append("")
    held = has_metric(rows, "heldout_style_ppl")
    if held:
        lines += _goal_table(goals["heldout"], "## Goal check: held-out style perplexity (best mode, per-prompt medians)",
                             "Style perplexity under a pack trained on the corpus's held-out documents, which the "
                             "steering pack never saw" + _part_note(meta) + ".")
    else:
        lines += ["## Goal check: held-out style perplexity", "",
                  "n/a: this run has no held-out pack (eval --heldout-pack NAME=PATH, a pack trained --part heldout).", ""]
    lines += _classifier_section(result, goals.get("classifier", []))
    lines += _goal_table(goals["in_sample"], "## Goal check: in-sample style perplexity (the paper's measure)",
                         "Under the steering pack's own counts: steering lowers it partly by construction; kept for "
                         "the comparison with the paper.")
    if held:
        lines += markdown_section(rows, {}, "heldout_style_ppl")
    lines += markdown_section(rows, anchors or {}, "style_ppl", "frontier_in_sample.png" if held else "frontier.png")
    cls = [k for k in CLASSIFIER_LABELS if has_metric(rows, f"p_style_{k}")]
    for corpus in sorted({r["corpus"] for r in rows}):
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            lines += [f"## {corpus}, {dec}", "",
                      "| family | lambda | in-sample style ppl | " + ("held-out style ppl | " if held else "")
                      + "".join(f"P(style) {k} | " for k in cls)
                      + "base ppl | rep4 | JS bits | unigram overlap | bigram seen | tokens |",
                      "|---|---|---|" + "---|" * (int(held) + len(cls)) + "---|---|---|---|---|---|"]
            sel = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and
                   (r["lambda"] == 0 or any(abs(r["lambda"] - x) < 1e-9 for x in table_lambdas))]
            for r in sel:
                extra = (f"{_fmt(r['heldout_style_ppl_median'])} | " if held else "") + \
                    "".join(f"{_fmt(r[f'p_style_{k}_median'])} | " for k in cls)
                lines.append(f"| {r['family']} | {r['lambda']:g} | {_fmt(r['style_ppl_median'])} | {extra}"
                             f"{_fmt(r['base_ppl_median'])} | {_fmt(r['rep4_median'])} | {_fmt(r['js_bits_median'])} | "
                             f"{_fmt(r['unigram_overlap_median'])} | {_fmt(r['bigram_seen_median'])} | "
                             f"{_fmt(r['tokens_median'])} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _goal_table(goals: list, title: str, note: str) -> list:
    lines = [title, "", note, "", "Checked over the paper's range lambda <= 1 and over every swept lambda.", "",
             f"style ppl <= {1 - GOAL['style_cut']:.0%} of lambda 0, base ppl <= +{GOAL['base_rel']:.0%}, "
             f"rep4 <= +{GOAL['rep4_abs']}, over a contiguous lambda range >= {GOAL['width']} wide", "",
             "| corpus | decoding | lambdas | passing lambdas | widest run | met |", "|---|---|---|---|---|---|"]
    for g in goals:
        run = f"{g['widest_run'][0]:g}-{g['widest_run'][-1]:g}" if g["widest_run"] else "-"
        rng = "<= 1" if g.get("max_lambda") == 1.0 else "all"
        lines.append(f"| {g['corpus']} | {g['decoding']} | {rng} | {', '.join(f'{x:g}' for x in g['passing_lambdas']) or '-'} "
                     f"| {run} | {'yes' if g['met'] else 'no'} |")
    return lines + [""]


def _part_note(meta: dict) -> str:
    """Which parts the packs were trained on (a steering pack of every document is flagged)."""
    parts = [f"{c['name']}: steering pack part {c.get('pack_part', 'n/a')}" for c in meta.get("corpora", [])
             if c.get("heldout_pack_path")]
    bad = [c["name"] for c in meta.get("corpora", []) if c.get("heldout_pack_path") and c.get("pack_part") != "train"]
    note = f" ({'; '.join(parts)})" if parts else ""
    if bad:
        note += (f". WARNING: the steering pack of {', '.join(bad)} was not trained on the train part only, so it saw "
                 "the held-out documents and these figures are not held out")
    return note


def _classifier_section(result: dict, goals: list) -> list:
    summaries = result.get("classifiers") or []
    if not summaries:
        return ["## Goal check: style classifiers", "",
                "n/a: no style classifier in this run (eval --style-corpus NAME=PATH --classifiers tfidf,minilm).", ""]
    lines = ["## Style classifiers", "",
             "Trained per style on chunks of the corpus's HELD-OUT documents (the steering pack's training part is "
             "never seen) against the model's own unsteered replies to non-evaluation prompts and held-out chunks "
             "of the other corpora; cross-validated balanced accuracy over grouped, stratified folds.", "",
             "| corpus | classifier | CV balanced accuracy | folds | chunk words | examples |", "|---|---|---|---|---|---|"]
    for c in summaries:
        ex = ", ".join(f"{k} {v}" for k, v in sorted(c["examples"].items()))
        lines.append(f"| {c['corpus']} | {CLASSIFIER_LABELS.get(c['classifier'], c['classifier'])} | "
                     f"{c['cv_balanced_accuracy']:.3f} | {len(c['cv_folds'])} | {c['chunk_words']} | {ex} |")
    lines += ["", "## Goal check: style classifiers (per-prompt median P(style))", "",
              f"Steering alone (best mode) >= prompt-only; prompt + best >= prompt-only + {CLASSIFIER_GOAL['combined_gain']}; "
              f"CV balanced accuracy >= {CLASSIFIER_GOAL['cv_accuracy']}. Steered points count only within the fluency "
              f"budget (base ppl <= +{GOAL['base_rel']:.0%}, rep4 <= +{GOAL['rep4_abs']} of unsteered); the highest "
              "P(style) among them is shown with its lambda.", "",
              "| corpus | decoding | classifier | CV acc | unsteered | prompt-only | best alone (lambda) | "
              "prompt+best (lambda) | met |", "|---|---|---|---|---|---|---|---|---|"]
    for g in goals:
        alone = "none in budget" if g["steer_alone_lambda"] is None else f"{g['p_steer_alone']:.2f} ({g['steer_alone_lambda']:g})"
        combo = "none in budget" if g["prompt_steer_lambda"] is None else f"{g['p_prompt_steer']:.2f} ({g['prompt_steer_lambda']:g})"
        why = [w for w, ok in (("alone < prompt", g["steer_alone_met"]), ("combined gain < 0.2", g["combined_met"]),
                               ("CV acc < 0.9", g["cv_met"])) if not ok]
        lines.append(f"| {g['corpus']} | {g['decoding']} | {g['classifier']} | {g['cv_balanced_accuracy']:.3f} | "
                     f"{_fmt(g['p_unsteered'], 2)} | {_fmt(g['p_prompt'], 2)} | {alone} | {combo} | "
                     f"{'yes' if g['met'] else 'no: ' + '; '.join(why)} |")
    return lines + [""]


def load_result(out_dir: str) -> dict:
    """Read back what write_report wrote (results.json + generations.jsonl), to rebuild reports."""
    with open(os.path.join(out_dir, "results.json")) as fh:
        data = json.load(fh)
    texts = {}
    gen_path = os.path.join(out_dir, "generations.jsonl")
    if os.path.exists(gen_path):
        with open(gen_path) as fh:
            for line in fh:
                g = json.loads(line)
                texts[(g["corpus"], g["decoding"], g["family"], g["lambda"], g["prompt_id"])] = g["text"]
    records = []
    for r in data["records"]:
        r = {k: (float("nan") if v is None and k in METRICS else v) for k, v in r.items()}
        r["text"] = texts.get((r["corpus"], r["decoding"], r["family"], r["lambda"], r["prompt_id"]), "")
        records.append(r)
    return {"meta": data["meta"], "records": records, "anchors": data.get("anchors", []),
            "classifiers": data.get("classifiers", []), "negative_replies": data.get("negative_replies", [])}


def write_report(result: dict, out_dir: str, plots: bool = True) -> dict:
    """Write summary.csv, results.json, generations.jsonl, <corpus>.png and summary.md into out_dir."""
    from .anchor import summarise

    os.makedirs(out_dir, exist_ok=True)
    rows = aggregate(result["records"])
    anchor_records = result.get("anchors") or []
    anchors = summarise(anchor_records)
    wide = any(r["lambda"] > 1.0 + 1e-9 for r in rows)
    goals = {}
    for key, style in (("in_sample", "style_ppl"), ("heldout", "heldout_style_ppl")):
        goals[key] = goal_check(rows, max_lambda=1.0, style=style) + (goal_check(rows, style=style) if wide else [])
    goals["classifier"] = classifier_goal_check(rows, result.get("classifiers") or [])
    write_csv(rows, os.path.join(out_dir, "summary.csv"))
    metrics_only = [{k: v for k, v in r.items() if k != "text"} for r in result["records"]]
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        # "goal" stays the in-sample check, as older readers of results.json expect
        json.dump(_json_safe({"meta": result["meta"], "goal": goals["in_sample"], "goal_heldout": goals["heldout"],
                              "goal_classifier": goals["classifier"], "summary": rows, "records": metrics_only,
                              "anchors": anchor_records, "classifiers": result.get("classifiers") or [],
                              "negative_replies": result.get("negative_replies") or []}), fh, indent=1)
    with open(os.path.join(out_dir, "generations.jsonl"), "w") as fh:
        for r in result["records"]:
            fh.write(json.dumps({k: r[k] for k in ("corpus", "decoding", "family", "lambda", "prompt_id", "text")},
                                ensure_ascii=False) + "\n")
    paths = {"csv": "summary.csv", "json": "results.json", "generations": "generations.jsonl", "md": "summary.md"}
    if plots:
        for corpus in sorted({r["corpus"] for r in rows}):
            name = f"{corpus}.png"
            plot_corpus(rows, corpus, os.path.join(out_dir, name))
            paths[f"plot:{corpus}"] = name
        if has_metric(rows, "heldout_style_ppl"):  # the headline frontier is held out; in-sample stays
            plot_frontier(rows, {}, os.path.join(out_dir, "frontier.png"), style="heldout_style_ppl")
            plot_frontier(rows, anchors, os.path.join(out_dir, "frontier_in_sample.png"))
            paths["plot:frontier_in_sample"] = "frontier_in_sample.png"
        else:
            plot_frontier(rows, anchors, os.path.join(out_dir, "frontier.png"))
        paths["plot:frontier"] = "frontier.png"
    with open(os.path.join(out_dir, "summary.md"), "w") as fh:
        fh.write(markdown(result, rows, goals, anchors=anchors))
    return {k: os.path.join(out_dir, v) for k, v in paths.items()}
