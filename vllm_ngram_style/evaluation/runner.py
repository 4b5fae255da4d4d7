"""The evaluation sweep: for each corpus, every configuration x prompt x decoding in ONE generate
call (each request carries its own style, strength, mode, adaptive flag and loop guard), then the
metrics of every generation.

Configuration families (lambda = style strength):
  unsteered       lambda = 0 (every family's lambda-0 point)
  prompt          prompt-only baseline: an instruction to write like the corpus's author, no steering
  paper           the paper's sparse injection (faithful reproduction)
  exact           the dense formula, exactly (sparse non-negative bias)
  exact+adaptive  exact, lambda scaled per step by the model's normalised entropy
  best            exact + adaptive + loop guard
  prompt+best     the instruction and best-mode steering together
"""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .backends import ForwardScorer, GenRequest, TransformersBackend, VllmBackend, vllm_plugin_available
from .metrics import PackScorer, ppl_from_logprobs, score_sequence
from .prompts import load_negative_prompts
from .steer import RowSteerer, Steer

PAPER_LAMBDAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STEERED_FAMILIES = ("paper", "exact", "exact+adaptive", "best")
EXTRA_FAMILIES = ("kn",)  # Kneser-Ney (mode kn): asked for explicitly, best with packs trained --kneser-ney
DEFAULT_GUARD = 4
DECODINGS = ("greedy", "sample")


def family_steer(family: str, style: str, strength: float, guard: int, penalty: float = 0.0) -> Steer | None:
    """The Steer of a family at one strength; None for unsteered families."""
    if family in ("unsteered", "prompt") or strength == 0:
        return None
    base = family[len("prompt+"):] if family.startswith("prompt+") else family
    kw = {"paper": dict(mode="paper"), "exact": dict(mode="exact"),
          "exact+adaptive": dict(mode="exact", adaptive=True),
          "best": dict(mode="exact", adaptive=True, loop_guard=guard, loop_penalty=penalty if guard else 0.0),
          "kn": dict(mode="kn")}
    if base not in kw:
        raise ConfigError(f"unknown configuration family {family!r}; choose from {', '.join(kw)}")
    return Steer(style=style, strength=float(strength), **kw[base])


@dataclass(frozen=True)
class RunConfig:
    family: str
    strength: float

    @property
    def instructed(self) -> bool:
        return self.family == "prompt" or self.family.startswith("prompt+")

    @property
    def label(self) -> str:
        return f"{self.family}@{self.strength:g}"


@dataclass(frozen=True)
class CorpusSpec:
    name: str  # style name (as configured in the engine)
    pack_path: str
    instruction: str  # the prompt-only baseline's instruction
    # a pack of the same corpus's held-out documents (train --part heldout): every generation's
    # style perplexity under it, beside the in-sample one under the steering pack
    heldout_pack_path: str | None = None


@dataclass
class EvalSettings:
    lambdas: tuple = PAPER_LAMBDAS
    families: tuple = STEERED_FAMILIES
    prompt_lambdas: tuple = PAPER_LAMBDAS  # strengths of prompt+best (0 -> the prompt-only baseline)
    decodings: tuple = DECODINGS
    max_tokens: int = 128
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    loop_guard: int = DEFAULT_GUARD
    loop_penalty: float = 0.0  # best mode's loop penalty (style_loop_penalty); 0 = the guard only withholds
    js_prompts: int | None = None  # vLLM backend: JS divergence for the first n prompts (None = all)
    js_decodings: tuple = DECODINGS  # vLLM backend: ... and only for these decodings
    sample_families: tuple | None = None  # families also run with sampling (None = all); greedy runs all
    family_lambdas: dict = field(default_factory=dict)  # family -> its own strengths (default: lambdas)
    # built-in non-evaluation prompts (prompts.load_negative_prompts) whose unsteered replies are
    # generated, in every decoding, with the first corpus's batch: the style classifiers' negatives
    negative_prompts: int = 0

    def configs(self) -> list:
        out = [RunConfig("unsteered", 0.0), RunConfig("prompt", 0.0)]
        for fam in self.families:
            out += [RunConfig(fam, float(lam)) for lam in self.family_lambdas.get(fam, self.lambdas) if lam > 0]
        out += [RunConfig("prompt+best", float(lam)) for lam in self.prompt_lambdas if lam > 0]
        return out


def encode_prompt(tok, text: str) -> list:
    """Token ids of a user message, in the model's chat format when it has one."""
    if getattr(tok, "chat_template", None):
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return list(tok(rendered, add_special_tokens=False).input_ids)
    return list(tok(text).input_ids)


def make_backend(kind: str, model_dir: str, corpora: list, packs: dict, max_model_len: int,
                 enforce_eager: bool = False, batch_size: int = 16, max_num_seqs: int = 256,
                 max_num_batched_tokens: int | None = None, modes=("exact", "paper")):
    if kind == "auto":
        kind = "vllm" if vllm_plugin_available() else "transformers"
    if kind == "vllm":
        if not vllm_plugin_available():
            raise ConfigError("the vllm backend needs vLLM and vllm_ngram_style.vllm_v1; use --backend transformers")
        return VllmBackend(model_dir, {c.name: c.pack_path for c in corpora}, modes, max_model_len=max_model_len,
                           enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
                           max_num_batched_tokens=max_num_batched_tokens)
    if kind == "transformers":
        return TransformersBackend(model_dir, packs, modes, batch_size=batch_size)
    raise ConfigError(f"unknown backend {kind!r}; choose auto, vllm or transformers")


def run_evaluation(model_dir: str, corpora: list, prompts: list, settings: EvalSettings, backend="auto",
                   progress: bool = True, enforce_eager: bool = False, log=print, on_corpus_done=None,
                   max_num_seqs: int = 256) -> dict:
    """Generate and score everything. Returns {"meta": ..., "records": [one dict per generation]}.
    on_corpus_done(partial_result), if given, runs after each corpus (e.g. to write a report early)."""
    from tqdm.auto import tqdm

    from ..pack import load_pack
    from ..tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_vocab_size

    if not corpora:
        raise ConfigError("no corpora to evaluate")
    if not prompts:
        raise ConfigError("no prompts to evaluate")
    tok = load_tokenizer(model_dir)
    fp, vocab = tokenizer_fingerprint(tok), tokenizer_vocab_size(tok)
    packs, heldout = {}, {}
    for c in corpora:
        pack = load_pack(c.pack_path)
        pack.check_tokenizer(fp, vocab, model_dir)
        packs[c.name] = pack
        if c.heldout_pack_path:
            heldout[c.name] = load_pack(c.heldout_pack_path)
            heldout[c.name].check_tokenizer(fp, vocab, model_dir)
    negatives = load_negative_prompts(settings.negative_prompts) if settings.negative_prompts > 0 else []
    negative_ids = [encode_prompt(tok, p.text) for p in negatives]
    plain_ids = [encode_prompt(tok, p.text) for p in prompts]
    instructed_ids = {c.name: [encode_prompt(tok, c.instruction + "\n\n" + p.text) for p in prompts] for c in corpora}
    longest = max(len(x) for ids in [plain_ids, negative_ids, *instructed_ids.values()] for x in ids)
    max_model_len = int(2 ** math.ceil(math.log2(longest + settings.max_tokens + 8)))
    # Prefill every prompt of a batch in one step: seeded requests must never be chunk-prefilled
    # on vLLM's CPU runner (see VllmBackend).
    n_req = len(settings.configs()) * len(prompts) * len(settings.decodings) + len(negatives) * len(settings.decodings)
    budget = min(max_num_seqs, n_req) * longest + max_num_seqs
    max_num_batched_tokens = max(8192, max_model_len, int(math.ceil(budget / 1024)) * 1024)
    t0 = time.perf_counter()
    modes = ("exact", "paper") + (("kn",) if "kn" in settings.families else ())
    gen = backend if not isinstance(backend, str) else make_backend(
        backend, model_dir, corpora, packs, max_model_len, enforce_eager, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, modes=modes)
    startup_s = time.perf_counter() - t0
    steerer = RowSteerer(packs, modes)
    js_scorer = None
    if gen.name != "transformers" and settings.js_prompts != 0:
        js_scorer = ForwardScorer(model_dir, steerer)

    configs = settings.configs()
    records, timings, replies = [], [], []
    for ci, corpus in enumerate(corpora):
        scorer = PackScorer(packs[corpus.name])
        heldout_scorer = PackScorer(heldout[corpus.name]) if corpus.name in heldout else None
        jobs, reqs = [], []
        if ci == 0:  # unsteered, so corpus-independent: generated once, in the first batch
            for pi, (prompt, ids) in enumerate(zip(negatives, negative_ids)):
                for dec in settings.decodings:
                    greedy = dec == "greedy"
                    reqs.append(GenRequest(ids, Steer(), settings.max_tokens, 0.0 if greedy else settings.temperature,
                                           1.0 if greedy else settings.top_p, settings.seed + pi))
                    jobs.append((None, pi, prompt, dec))
        for cfg in configs:
            steer = family_steer(cfg.family, corpus.name, cfg.strength, settings.loop_guard,
                                 settings.loop_penalty) or Steer()
            for pi, prompt in enumerate(prompts):
                ids = instructed_ids[corpus.name][pi] if cfg.instructed else plain_ids[pi]
                for dec in settings.decodings:
                    if dec != "greedy" and settings.sample_families is not None \
                            and cfg.family not in settings.sample_families:
                        continue
                    greedy = dec == "greedy"
                    reqs.append(GenRequest(ids, steer, settings.max_tokens, 0.0 if greedy else settings.temperature,
                                           1.0 if greedy else settings.top_p, settings.seed + pi))
                    jobs.append((cfg, pi, prompt, dec))
        log(f"[{corpus.name}] {len(configs)} configurations x {len(prompts)} prompts x "
            f"{len(settings.decodings)} decodings" + (f" + {len(negatives)} classifier-negative prompts" if ci == 0 and negatives
                                                      else "") + f" = {len(reqs)} sequences in one {gen.name} call")
        t1 = time.perf_counter()
        results = gen.generate(reqs, progress=progress)
        gen_s = time.perf_counter() - t1
        n_tok = sum(len(r.token_ids) for r in results)
        timings.append({"corpus": corpus.name, "sequences": len(reqs), "generated_tokens": n_tok,
                        "generate_seconds": round(gen_s, 1), "tokens_per_second": round(n_tok / max(gen_s, 1e-9), 1)})
        t2 = time.perf_counter()
        for (cfg, pi, prompt, dec), req, res in tqdm(list(zip(jobs, reqs, results)), desc=f"scoring {corpus.name}",
                                                      unit="seq", disable=not progress):
            if cfg is None:  # a classifier negative: its text, nothing scored
                replies.append({"prompt_id": prompt.id, "category": prompt.category, "decoding": dec,
                                "tokens": len(res.token_ids), "text": tok.decode(res.token_ids, skip_special_tokens=True)})
                continue
            js = res.js_bits
            lp_diff = None
            if js_scorer is not None and (settings.js_prompts is None or pi < settings.js_prompts) \
                    and dec in settings.js_decodings:
                hf_lp, js = js_scorer.score(req.prompt_ids, res.token_ids, req.steer)
                if hf_lp:
                    lp_diff = float(np.max(np.abs(np.asarray(hf_lp) - np.asarray(res.base_logprobs))))
            m = score_sequence(scorer, res.token_ids, res.base_logprobs, js)
            rec = {"corpus": corpus.name, "decoding": dec, "family": cfg.family, "lambda": cfg.strength,
                   "prompt_id": prompt.id, "category": prompt.category, **m.as_dict(),
                   "style_nll_sum": float(-np.sum(scorer.mixture_logprob(res.token_ids))),
                   "base_nll_sum": float(-np.sum(res.base_logprobs)), "finish_reason": res.finish_reason,
                   "text": tok.decode(res.token_ids, skip_special_tokens=True)}
            if heldout_scorer is not None:  # the same text under counts the steering never saw
                held_lp = heldout_scorer.mixture_logprob(res.token_ids)
                rec["heldout_style_ppl"] = ppl_from_logprobs(held_lp)
                rec["heldout_style_nll_sum"] = float(-np.sum(held_lp))
            if lp_diff is not None:
                rec["base_lp_maxdiff_vs_transformers"] = lp_diff
            records.append(rec)
        timings[-1]["score_seconds"] = round(time.perf_counter() - t2, 1)
        log(f"[{corpus.name}] generated {n_tok:,} tokens in {gen_s:.0f} s ({n_tok / max(gen_s, 1e-9):.1f} tok/s)")
        if on_corpus_done is not None:
            on_corpus_done({"meta": _meta(model_dir, gen, settings, corpora, prompts, timings, startup_s, packs, heldout),
                            "records": records, "negative_replies": replies})
    return {"meta": _meta(model_dir, gen, settings, corpora, prompts, timings, startup_s, packs, heldout),
            "records": records, "negative_replies": replies}


def _meta(model_dir, gen, settings, corpora, prompts, timings, startup_s, packs, heldout) -> dict:
    from ..corpus_split import pack_part

    corpora_meta = []
    for c in corpora:
        m = asdict(c) | {"pack_path": os.path.basename(c.pack_path), "pack_part": pack_part(packs[c.name].corpus),
                         "pack_split": str(packs[c.name].corpus.get("split", "auto"))}
        if c.heldout_pack_path:
            m |= {"heldout_pack_path": os.path.basename(c.heldout_pack_path),
                  "heldout_pack_part": pack_part(heldout[c.name].corpus)}
        corpora_meta.append(m)
    return {"model": os.path.basename(os.path.normpath(model_dir)), "backend": gen.name, "settings": asdict(settings),
            "corpora": corpora_meta,
            "prompts": [asdict(p) for p in prompts], "timings": timings, "startup_seconds": round(startup_s, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
            "js_source": ("transformers backend, during generation" if gen.name == "transformers" else
                          f"transformers forward over prompt+generation, first "
                          f"{'all' if settings.js_prompts is None else settings.js_prompts} prompts, "
                          f"{'/'.join(settings.js_decodings)}"),
            "base_ppl_source": ("vLLM raw logprobs (before logits processors)" if gen.name == "vllm"
                                else "log_softmax of unsteered logits at each step")}
