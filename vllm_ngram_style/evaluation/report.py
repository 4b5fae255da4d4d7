"""Write an evaluation's CSV, JSON, PNG plots and markdown summary (aggregates: aggregate.py)."""
from __future__ import annotations

import csv
import json
import math
import os

from .aggregate import FAMILY_STYLE, GOAL, METRICS, aggregate, family_curve, goal_check  # noqa: F401 (re-exported)
from .frontier import markdown_section, plot_frontier

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
    panels = [("style_ppl", "style perplexity", True), ("base_ppl", "base-model perplexity", True),
              ("rep4", "4-gram repetition rate", False), ("js_bits", "JS divergence (bits)", False)]
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
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def markdown(result: dict, rows: list, goals: list, table_lambdas=(0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0),
             anchors: dict | None = None) -> str:

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
    lines += ["## Goal check (best mode, per-prompt medians)", "",
              "Checked over the paper's range lambda <= 1 and over every swept lambda.", "",
              f"style ppl <= {1 - GOAL['style_cut']:.0%} of lambda 0, base ppl <= +{GOAL['base_rel']:.0%}, "
              f"rep4 <= +{GOAL['rep4_abs']}, over a contiguous lambda range >= {GOAL['width']} wide", "",
              "| corpus | decoding | lambdas | passing lambdas | widest run | met |", "|---|---|---|---|---|---|"]
    for g in goals:
        run = f"{g['widest_run'][0]:g}-{g['widest_run'][-1]:g}" if g["widest_run"] else "-"
        rng = "<= 1" if g.get("max_lambda") == 1.0 else "all"
        lines.append(f"| {g['corpus']} | {g['decoding']} | {rng} | {', '.join(f'{x:g}' for x in g['passing_lambdas']) or '-'} "
                     f"| {run} | {'yes' if g['met'] else 'no'} |")
    lines.append("")
    lines += markdown_section(rows, anchors or {})
    for corpus in sorted({r["corpus"] for r in rows}):
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            lines += [f"## {corpus}, {dec}", "",
                      "| family | lambda | style ppl | base ppl | rep4 | JS bits | unigram overlap | bigram seen | tokens |",
                      "|---|---|---|---|---|---|---|---|---|"]
            sel = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and
                   (r["lambda"] == 0 or any(abs(r["lambda"] - x) < 1e-9 for x in table_lambdas))]
            for r in sel:
                lines.append(f"| {r['family']} | {r['lambda']:g} | {_fmt(r['style_ppl_median'])} | "
                             f"{_fmt(r['base_ppl_median'])} | {_fmt(r['rep4_median'])} | {_fmt(r['js_bits_median'])} | "
                             f"{_fmt(r['unigram_overlap_median'])} | {_fmt(r['bigram_seen_median'])} | "
                             f"{_fmt(r['tokens_median'])} |")
            lines.append("")
    return "\n".join(lines) + "\n"


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
    return {"meta": data["meta"], "records": records, "anchors": data.get("anchors", [])}


def write_report(result: dict, out_dir: str, plots: bool = True) -> dict:
    """Write summary.csv, results.json, generations.jsonl, <corpus>.png and summary.md into out_dir."""
    from .anchor import summarise

    os.makedirs(out_dir, exist_ok=True)
    rows = aggregate(result["records"])
    anchor_records = result.get("anchors") or []
    anchors = summarise(anchor_records)
    goals = goal_check(rows, max_lambda=1.0)
    if any(r["lambda"] > 1.0 + 1e-9 for r in rows):
        goals += goal_check(rows)
    write_csv(rows, os.path.join(out_dir, "summary.csv"))
    metrics_only = [{k: v for k, v in r.items() if k != "text"} for r in result["records"]]
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump(_json_safe({"meta": result["meta"], "goal": goals, "summary": rows, "records": metrics_only,
                              "anchors": anchor_records}), fh, indent=1)
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
        plot_frontier(rows, anchors, os.path.join(out_dir, "frontier.png"))
        paths["plot:frontier"] = "frontier.png"
    with open(os.path.join(out_dir, "summary.md"), "w") as fh:
        fh.write(markdown(result, rows, goals, anchors=anchors))
    return {k: os.path.join(out_dir, v) for k, v in paths.items()}
