"""The style / fluency frontier: how much style each family buys for how much base perplexity.

The goal (aggregate.GOAL) asks for a >= 50% style-perplexity cut at <= +10% base perplexity and
<= +0.05 repetition. Plotting every configuration as (base ppl / unsteered, style ppl /
unsteered) shows at a glance whether any strength of any family enters that box, and how far the
corpus's own text (evaluation.anchor) lies from it: the frontier's far end.

The style axis is ``style``: heldout_style_ppl (a pack of held-out documents) when the run has it,
else the in-sample style_ppl; the anchor (real corpus text, scored in-sample) is shown only on the
in-sample frontier, where its style perplexity is on the same footing.
"""
from __future__ import annotations

import math

from .aggregate import FAMILY_STYLE, GOAL, STYLE_LABELS, family_curve

FRONTIER_FAMILIES = ("prompt", *FAMILY_STYLE)


def _ratios(row: dict, base: dict, stat: str, style: str = "style_ppl"):
    return (row[f"base_ppl_{stat}"] / base[f"base_ppl_{stat}"], row[f"{style}_{stat}"] / base[f"{style}_{stat}"],
            row[f"rep4_{stat}"] - base[f"rep4_{stat}"])


def frontier_rows(rows: list, stat: str = "median", style: str = "style_ppl") -> list:
    """Per corpus, decoding and family: the largest style cut whose base-ppl rise and rep4 rise
    are within the goal's budget, and the smallest base-ppl rise among points that halve style
    perplexity (with rep4 within budget). Ratios are against the unsteered row of that decoding."""
    out = []
    for corpus in sorted({r["corpus"] for r in rows}):
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            base = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == "unsteered"]
            if not base:
                continue
            for fam in FRONTIER_FAMILIES:
                pts = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == fam]
                if not pts:
                    continue
                within, halving = [], []
                for r in pts:
                    b, s, rep = _ratios(r, base[0], stat, style)
                    if not (math.isfinite(b) and math.isfinite(s)):
                        continue
                    rep_ok = not math.isfinite(rep) or rep <= GOAL["rep4_abs"] + 1e-12
                    if b <= 1 + GOAL["base_rel"] + 1e-12 and rep_ok:
                        within.append((1 - s, r["lambda"]))
                    if s <= 1 - GOAL["style_cut"] + 1e-12 and rep_ok:
                        halving.append((b - 1, r["lambda"]))
                best_cut = max(within) if within else None
                cheapest = min(halving) if halving else None
                out.append({"corpus": corpus, "decoding": dec, "family": fam, "points": len(pts),
                            "max_style_cut_in_budget": best_cut[0] if best_cut else None,
                            "at_lambda": best_cut[1] if best_cut else None,
                            "min_base_rise_halving": cheapest[0] if cheapest else None,
                            "halving_lambda": cheapest[1] if cheapest else None})
    return out


def anchor_ratios(rows: list, anchors: dict, stat: str = "median") -> list:
    """The corpus text's style and base perplexity relative to each decoding's unsteered run."""
    out = []
    for corpus, a in sorted(anchors.items()):
        for dec in sorted({r["decoding"] for r in rows if r["corpus"] == corpus}):
            base = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == "unsteered"]
            if base:
                b = base[0]
                out.append({"corpus": corpus, "decoding": dec, "style_ratio": a["style_ppl_median"] / b[f"style_ppl_{stat}"],
                            "base_ratio": a["base_ppl_median"] / b[f"base_ppl_{stat}"], **a})
    return out


def _pct(x):
    return "-" if x is None else f"{x:+.0%}"


def markdown_section(rows: list, anchors: dict, style: str = "style_ppl", plot: str = "frontier.png") -> list:
    """Lines of the summary's frontier section, on the style measure ``style``."""
    label = STYLE_LABELS.get(style, style)
    lines = [f"## Frontier ({label}): what the goal's budget buys", "",
             f"Style measure: {label}. Per family: the largest style-perplexity cut among its strengths that keep base perplexity within "
             f"+{GOAL['base_rel']:.0%} and rep4 within +{GOAL['rep4_abs']} of unsteered, and the smallest base-perplexity "
             f"rise among strengths that cut style perplexity by >= {GOAL['style_cut']:.0%} (rep4 within budget). "
             f"The goal needs both in one family, over a range of strengths. Plot: {plot}.", "",
             "| corpus | decoding | family | largest style cut within budget (lambda) | "
             "smallest base-ppl rise that halves style ppl (lambda) |", "|---|---|---|---|---|"]
    for f in frontier_rows(rows, style=style):
        cut = "none" if f["max_style_cut_in_budget"] is None else \
            f"{-f['max_style_cut_in_budget']:+.0%} ({f['at_lambda']:g})"
        rise = "never" if f["min_base_rise_halving"] is None else \
            f"{_pct(f['min_base_rise_halving'])} ({f['halving_lambda']:g})"
        lines.append(f"| {f['corpus']} | {f['decoding']} | {f['family']} | {cut} | {rise} |")
    lines.append("")
    if anchors and style == "style_ppl":
        lines += ["Corpus text as the far end of the frontier (real passages, scored like generations as replies to "
                  "the prompts; style perplexity is in-sample, hence optimistic):", "",
                  "| corpus | decoding | passages | style ppl (vs unsteered) | base ppl (vs unsteered) | rep4 |",
                  "|---|---|---|---|---|---|"]
        for a in anchor_ratios(rows, anchors):
            lines.append(f"| {a['corpus']} | {a['decoding']} | {a['n']} | {a['style_ppl_median']:.0f} "
                         f"({a['style_ratio'] - 1:+.0%}) | {a['base_ppl_median']:.3g} ({a['base_ratio'] - 1:+.0%}) | "
                         f"{a['rep4_median']:.3g} |")
        lines.append("")
    return lines


def plot_frontier(rows: list, anchors: dict, path: str, stat: str = "median", style: str = "style_ppl") -> None:
    """One panel per corpus and decoding: style ratio vs base ratio, a line per family in lambda
    order, a cross on points whose repetition is over the goal's budget, the goal's box shaded,
    the corpus text as a star (or an edge marker when far off scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    keys = [(c, d) for c in sorted({r["corpus"] for r in rows})
            for d in sorted({r["decoding"] for r in rows if r["corpus"] == c})]
    if not keys:
        return
    corpora = sorted({c for c, _ in keys})
    decs = sorted({d for _, d in keys})
    fig, axes = plt.subplots(len(corpora), len(decs), figsize=(5.2 * len(decs), 4.2 * len(corpora)), squeeze=False)
    anchor_by = {(a["corpus"], a["decoding"]): a for a in anchor_ratios(rows, anchors or {})} \
        if style == "style_ppl" else {}
    for i, corpus in enumerate(corpora):
        for j, dec in enumerate(decs):
            ax = axes[i][j]
            base = [r for r in rows if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == "unsteered"]
            if not base:
                ax.set_visible(False)
                continue
            xs_all, ys_all = [1.0], [1.0]
            rep_marked = False
            for fam, (color, ls) in FAMILY_STYLE.items():
                curve = family_curve(rows, corpus, dec, fam)
                if len(curve) < 2:
                    continue
                pts = [_ratios(r, base[0], stat, style) for r in curve]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, ls, color=color, marker="o", ms=3, label=fam)
                loops = [(x, y) for x, y, rep in pts if math.isfinite(rep) and rep > GOAL["rep4_abs"] + 1e-12]
                if loops:  # inside the box on these two axes can still fail the goal on repetition
                    ax.plot([x for x, _ in loops], [y for _, y in loops], "x", color="black", ms=6, mew=0.8,
                            label=None if rep_marked else f"rep4 > unsteered + {GOAL['rep4_abs']}")
                    rep_marked = True
                if fam == "best":
                    for r, x, y in zip(curve[1:], xs[1:], ys[1:]):
                        ax.annotate(f"{r['lambda']:g}", (x, y), fontsize=6, color=color, xytext=(2, 2),
                                    textcoords="offset points")
                xs_all += xs
                ys_all += ys
            for r in rows:
                if r["corpus"] == corpus and r["decoding"] == dec and r["family"] == "prompt":
                    x, y, rep = _ratios(r, base[0], stat, style)
                    ax.plot([x], [y], "s", color="gray", label="prompt only")
                    if math.isfinite(rep) and rep > GOAL["rep4_abs"] + 1e-12:
                        ax.plot([x], [y], "x", color="black", ms=6, mew=0.8)
                    xs_all.append(x)
                    ys_all.append(y)
            finite = [(x, y) for x, y in zip(xs_all, ys_all) if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0]
            x_hi = max(max(x for x, _ in finite) * 1.3, 1 + 2 * GOAL["base_rel"])
            a = anchor_by.get((corpus, dec))
            if a is not None:
                y = a["style_ratio"]
                finite.append((min(a["base_ratio"], x_hi), y))
                if a["base_ratio"] <= x_hi:
                    ax.plot([a["base_ratio"]], [y], "*", color="black", ms=11, label="corpus text")
                else:  # far off to the right: an edge marker with its value, so the frontier keeps its scale
                    ax.plot([x_hi], [y], ">", color="black", ms=8, label="corpus text (off scale)")
                    ax.annotate(f"corpus text: base x{a['base_ratio']:.0f}", (x_hi, y), fontsize=7, ha="right",
                                xytext=(-8, 4), textcoords="offset points")
            x_lo = min(x for x, _ in finite) / 1.15
            y_lo = min(y for _, y in finite) / 1.3
            ax.fill_between([x_lo, 1 + GOAL["base_rel"]], y_lo, 1 - GOAL["style_cut"], color="tab:green", alpha=0.15,
                            label="goal box", zorder=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_xlim(x_lo, x_hi * 1.05)
            ax.set_ylim(bottom=y_lo)
            ax.axvline(1.0, color="gray", lw=0.6)
            ax.axhline(1.0, color="gray", lw=0.6)
            ax.set_xlabel("base-model perplexity / unsteered")
            ax.set_ylabel(f"{STYLE_LABELS.get(style, style)} / unsteered")
            ax.set_title(f"{corpus}, {dec} (per-prompt {stat}s)", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
