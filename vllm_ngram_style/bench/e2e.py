"""End-to-end offline vLLM throughput (``run_e2e``): output tokens/s and time per output token for
N requests through vLLM's offline LLM API, for variants measured in the same run and interleaved
round by round: (a) no logits processor, (b) the plugin loaded with no request steered, the plugin
with a fraction of requests steered over 1 or several styles, and (c) the naive per-request
processor (naive_processor.py) for contrast. Ratios are paired per round against (a). Timing
wrappers record the CPU time spent inside each processor's update_state/apply, so the steering
share of the engine's CPU time is measured directly (robust on a shared machine where wall clock is
noisy). vLLM is imported lazily.
"""
from __future__ import annotations

import gc
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

PROC_TIME: Counter = Counter()  # "<tag>.cpu" / "<tag>.calls": CPU seconds inside processor calls


def _timed(factory, tag: str):
    """A V1 processor class that builds ``factory``'s processor and adds the calling thread's CPU
    time spent in its update_state and apply to PROC_TIME (two clock reads per call: negligible).
    It wraps instead of subclassing, so it times the plugin's one class (which constructs its V1
    implementation) and the naive processor alike."""
    from vllm.v1.sample.logits_processor import LogitsProcessor

    class Timed(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            self.inner = factory(vllm_config, device, is_pin_memory)

        @classmethod
        def validate_params(cls, params):
            factory.validate_params(params)

        def is_argmax_invariant(self) -> bool:
            return self.inner.is_argmax_invariant()

        def update_state(self, batch_update):
            t = time.thread_time()
            try:
                return self.inner.update_state(batch_update)
            finally:
                PROC_TIME[tag + ".cpu"] += time.thread_time() - t

        def apply(self, logits):
            t = time.thread_time()
            try:
                return self.inner.apply(logits)
            finally:
                PROC_TIME[tag + ".cpu"] += time.thread_time() - t
                PROC_TIME[tag + ".calls"] += 1

    Timed.__name__ = f"Timed{factory.__name__}"
    return Timed


@dataclass(frozen=True)
class Variant:
    label: str
    engine: str  # "none", "plugin", "naive"
    fraction: float  # share of requests steered
    styles: int  # distinct styles among the steered requests

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.fraction:g}:{self.styles}"


def default_variants(fractions=(0.5, 1.0), style_counts=(1, 4), naive_fraction=1.0) -> list[Variant]:
    n_max = max(style_counts)
    out = [Variant("(a) no processor", "none", 0.0, 0), Variant("(b) plugin loaded, none steered", "plugin", 0.0, 0)]
    for f in fractions:
        for s in style_counts:
            out.append(Variant(f"plugin, {f:.0%} steered, {s} style{'s' if s > 1 else ''}", "plugin", f, s))
    out.append(Variant(f"(c) naive per-request, {naive_fraction:.0%} steered, {n_max} styles", "naive",
                       naive_fraction, n_max))
    return out


@dataclass
class E2EModel:
    label: str  # e.g. "SmolLM2-135M"
    model_dir: str
    packs: dict  # name -> path
    prompt_stream: list  # token ids to cut prompts from
    batch_sizes: list
    max_tokens: int = 16  # mean output length per request
    max_model_len: int = 256


@dataclass
class E2ESettings:
    length_spread: float = 0.5  # output lengths uniform in max_tokens * [1 - spread, 1 + spread]
    prompt_len: int = 4
    requests_per_slot: float = 2.0  # N = requests_per_slot * batch size: requests join as others finish
    repeats: int = 3
    strength: float = 0.3
    seed: int = 0
    threads: int = 1
    variants: list = field(default_factory=default_variants)


def _requests(model: E2EModel, s: E2ESettings, batch: int, variant: Variant):
    """Token prompts and SamplingParams for one run: identical prompts and output lengths for
    every variant; the steered requests spread evenly, styles round-robin."""
    import random

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    n = max(1, int(round(s.requests_per_slot * batch)))
    rng = random.Random(s.seed * 1_000_003 + batch)
    lo = max(1, int(round(model.max_tokens * (1 - s.length_spread))))
    hi = max(lo, int(round(model.max_tokens * (1 + s.length_spread))))
    names = sorted(model.packs)[:max(1, variant.styles)]
    stream = model.prompt_stream
    prompts, params, steered = [], [], 0
    for i in range(n):
        start = rng.randrange(0, max(1, len(stream) - s.prompt_len))
        prompts.append(TokensPrompt(prompt_token_ids=list(stream[start:start + s.prompt_len])))
        length = rng.randint(lo, hi)
        extra = None
        if variant.fraction > 0 and int((i + 1) * variant.fraction) > int(i * variant.fraction):
            extra = {"style": names[steered % len(names)], "style_strength": s.strength}
            steered += 1
        params.append(SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True,
                                     detokenize=False, extra_args=extra))
    return prompts, params, steered


def _engine(model: E2EModel, kind: str, batch: int, seed: int):
    from vllm import LLM

    kwargs = dict(model=model.model_dir, dtype="float32", max_model_len=model.max_model_len, enforce_eager=True,
                  seed=seed, max_num_seqs=batch, disable_log_stats=False)
    if kind != "none":
        if kind == "plugin":
            from ..processor import NgramStyleLogitsProcessor as cls
        else:
            from ..naive_processor import NaiveStyleLogitsProcessor as cls
        kwargs.update(logits_processors=[_timed(cls, kind)],
                      additional_config={"ngram_style": {"styles": dict(model.packs), "modes": ["exact"]}})
    return LLM(**kwargs)


def _close(engines: dict) -> None:
    from vllm.distributed import cleanup_dist_env_and_memory

    engines.clear()
    gc.collect()
    cleanup_dist_env_and_memory()


def _one_run(llm, prompts, params, tag: str | None) -> dict:
    before = PROC_TIME[tag + ".cpu"] if tag else 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    want = sum(p.max_tokens for p in params)
    if tokens != want:
        raise RuntimeError(f"expected {want} output tokens, got {tokens}")
    itl = []  # per request: seconds between its first and last token / (tokens - 1)
    for o in outs:
        m = getattr(o, "metrics", None)
        n = len(o.outputs[0].token_ids)
        if m is not None and getattr(m, "last_token_ts", 0) and n > 1:
            itl.append((m.last_token_ts - m.first_token_ts) / (n - 1))
    return dict(wall=wall, cpu=cpu, tokens=tokens, proc_cpu=(PROC_TIME[tag + ".cpu"] - before) if tag else 0.0,
                tpot=statistics.median(itl) if itl else wall / max(1, max(p.max_tokens for p in params)))


def run_e2e(models: list[E2EModel], s: E2ESettings, log=print) -> list[dict]:
    """Every (model, batch size): build one engine per processor kind, warm each up, then `repeats`
    rounds in which every variant runs once (the order rotates each round). -> one row per
    (model, batch, variant, round)."""
    import torch

    torch.set_num_threads(s.threads)  # before vLLM's CPU worker pins it
    rows = []
    for model in models:
        for batch in model.batch_sizes:
            kinds = sorted({v.engine for v in s.variants})
            engines = {}
            t0 = time.perf_counter()
            for kind in kinds:
                engines[kind] = _engine(model, kind, batch, s.seed)
            log(f"[{model.label}] batch {batch}: engines ready in {time.perf_counter() - t0:.0f}s")
            reqs = {v.key: _requests(model, s, batch, v) for v in s.variants}
            for kind in kinds:  # warm-up: one short run per engine, steered where the engine steers
                v = next(v for v in s.variants if v.engine == kind and (v.fraction > 0 or kind == "none"))
                prompts, params, _ = reqs[v.key]
                engines[kind].generate(prompts[:batch], params[:batch], use_tqdm=False)
            for r in range(s.repeats):
                order = s.variants[r % len(s.variants):] + s.variants[:r % len(s.variants)]
                for v in order:
                    prompts, params, steered = reqs[v.key]
                    res = _one_run(engines[v.engine], prompts, params, None if v.engine == "none" else v.engine)
                    rows.append(dict(model=model.label, batch=batch, variant=v.label, key=v.key, round=r,
                                     requests=len(prompts), steered=steered, **res))
                    log(f"[{model.label}] B={batch} round {r} {v.label}: {res['tokens'] / res['wall']:.1f} tok/s wall, "
                        f"{res['tokens'] / res['cpu']:.1f} tok/CPU-s, processor {res['proc_cpu'] / res['cpu']:.2%} of CPU")
            _close(engines)
    return rows


def summarise(rows: list[dict], variants: list[Variant]) -> list[dict]:
    """Per (model, batch, variant): medians over rounds, and the median of the per-round ratios to
    (a) measured in the same round (paired: drift between rounds cancels)."""
    base_key = next(v.key for v in variants if v.engine == "none")
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["batch"]), []).append(r)
    for (model, batch), rs in groups.items():
        base = {r["round"]: r for r in rs if r["key"] == base_key}
        for v in variants:
            mine = [r for r in rs if r["key"] == v.key]
            if not mine:
                continue
            paired = [r for r in mine if r["round"] in base]
            ratio_w = [(r["tokens"] / r["wall"]) / (base[r["round"]]["tokens"] / base[r["round"]]["wall"]) for r in paired]
            ratio_c = [(r["tokens"] / r["cpu"]) / (base[r["round"]]["tokens"] / base[r["round"]]["cpu"]) for r in paired]
            share = [r["proc_cpu"] / r["cpu"] for r in mine]
            out.append(dict(
                model=model, batch=batch, variant=v.label, key=v.key, runs=len(mine), requests=mine[0]["requests"],
                steered=mine[0]["steered"], tokens=mine[0]["tokens"],
                tok_s_wall=statistics.median(r["tokens"] / r["wall"] for r in mine),
                tok_s_cpu=statistics.median(r["tokens"] / r["cpu"] for r in mine),
                tpot_ms=1e3 * statistics.median(r["tpot"] for r in mine),
                ratio_wall=statistics.median(ratio_w) if ratio_w else float("nan"),
                ratio_wall_range=(min(ratio_w), max(ratio_w)) if ratio_w else (float("nan"),) * 2,
                ratio_cpu=statistics.median(ratio_c) if ratio_c else float("nan"),
                ratio_cpu_range=(min(ratio_c), max(ratio_c)) if ratio_c else (float("nan"),) * 2,
                proc_share=statistics.median(share),
            ))
    return out
