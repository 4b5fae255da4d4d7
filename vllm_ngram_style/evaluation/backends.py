"""Generation backends for the evaluation: vLLM with the plugin (the product), and a small
transformers loop applying the same steering per step (tests, and a fallback without vLLM).

Both take a list of GenRequest and return one GenResult each, in order. Every result carries the
unsteered model's log-probability of each generated token (vLLM: its raw logprobs, computed before
any logits processor; transformers: log_softmax of the step's logits before steering), from
which the base-model perplexity follows without a second forward pass.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import torch

from .metrics import js_divergence_bits
from ..loop_guard import LOOP_GUARD_WINDOW
from .steer import RowSteerer, Steer


@dataclass
class GenRequest:
    prompt_ids: list
    steer: Steer
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class GenResult:
    token_ids: list
    base_logprobs: list  # [T] natural log p_unsteered(token_t | prefix)
    js_bits: list | None = None  # [T] per-step JS divergence, when the backend computes it
    finish_reason: str = ""
    extra: dict = field(default_factory=dict)


def vllm_plugin_available() -> bool:
    """True when vLLM and the plugin's V1 processor are importable (checked without importing vLLM)."""
    return (importlib.util.find_spec("vllm") is not None
            and importlib.util.find_spec("vllm_ngram_style.vllm_v1") is not None)


def set_vllm_cpu_env() -> None:
    """Environment vLLM's CPU backend needs here (see docs/vllm-notes.md); never overrides a user's value."""
    for k, v in {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_HOST_IP": "127.0.0.1",
                 "VLLM_NO_USAGE_STATS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
        os.environ.setdefault(k, v)


class VllmBackend:
    """One vLLM engine with every evaluated style configured; each request names its own style,
    strength, mode, adaptive flag and loop guard through SamplingParams.extra_args.

    max_num_batched_tokens should cover the prompts of a whole batch: vLLM 0.32's CPU runner dies
    ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync) when a request with
    its own sampling seed has its prefill split over two steps (chunked prefill), so the runner
    sizes the token budget to prefill every prompt of a batch in one step."""

    name = "vllm"

    def __init__(self, model_dir: str, pack_paths: dict, modes=("exact", "paper"), max_model_len: int = 1024,
                 max_num_seqs: int = 256, enforce_eager: bool = False, seed: int = 0,
                 max_num_batched_tokens: int | None = None):
        set_vllm_cpu_env()
        from vllm import LLM

        from ..vllm_v1 import NgramStyleLogitsProcessor

        self.llm = LLM(model=model_dir, dtype="float32", max_model_len=max_model_len, seed=seed,
                       max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
                       max_num_batched_tokens=max_num_batched_tokens,
                       logits_processors=[NgramStyleLogitsProcessor],
                       additional_config={"ngram_style": {"styles": dict(pack_paths), "modes": list(modes)}})

    def generate(self, requests: list, progress: bool = True) -> list:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        params = [SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                                 seed=r.seed if r.temperature > 0 else None, logprobs=0,
                                 extra_args=r.steer.extra_args() or None) for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=progress)
        results = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [float(step[t].logprob) for t, step in zip(ids, c.logprobs or [])]
            results.append(GenResult(ids, lps, None, str(c.finish_reason or "")))
        return results


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p; others -> -inf. [R, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, -1)
    cum = torch.cumsum(probs, -1)
    drop = (cum - probs) >= top_p  # tokens whose preceding mass already reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, idx, sorted_logits)


class TransformersBackend:
    """Batched decoding with a transformers causal LM (float32, CPU), steering each step with
    RowSteerer. Greedy rows take the argmax; sampled rows use their own seeded torch.Generator,
    so a row's text does not depend on which other rows share its batch."""

    name = "transformers"

    def __init__(self, model_dir: str, packs: dict, modes=("exact", "paper"), batch_size: int = 16,
                 compute_js: bool = True, model=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model if model is not None else \
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos = eos if eos is not None else tok.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.steerer = RowSteerer(packs, modes)
        self.batch_size = batch_size
        self.compute_js = compute_js

    def generate(self, requests: list, progress: bool = True) -> list:
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=len(requests), desc="generating (transformers)", unit="seq", disable=not progress) as bar:
            for i in range(0, len(requests), self.batch_size):
                out.extend(self._batch(requests[i:i + self.batch_size]))
                bar.update(len(requests[i:i + self.batch_size]))
        return out

    @torch.no_grad()
    def _batch(self, reqs: list) -> list:
        b = len(reqs)
        longest = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((b, longest), self.pad, dtype=torch.int64)  # [B, P] left-padded
        mask = torch.zeros((b, longest), dtype=torch.int64)  # [B, P]
        for i, r in enumerate(reqs):
            ids[i, longest - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, longest - len(r.prompt_ids):] = 1
        gens = [torch.Generator().manual_seed(int(r.seed)) for r in reqs]
        generated = [[] for _ in reqs]
        base_lp = [[] for _ in reqs]
        js = [[] for _ in reqs]
        done = [False] * b
        finish = ["length"] * b
        past = None
        step_ids, step_mask = ids, mask
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # [B, P]
        for _ in range(max(r.max_tokens for r in reqs)):
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                             past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()  # [B, V] unsteered
            steered = self.steerer.apply(
                logits.clone(), [r.steer for r in reqs],
                [self.steerer.context(r.prompt_ids, g) for r, g in zip(reqs, generated)],
                [self.steerer.history(g) if r.steer.loop_guard else [-1] * LOOP_GUARD_WINDOW
                 for r, g in zip(reqs, generated)])
            logp = torch.log_softmax(logits, -1)  # [B, V]
            step_js = js_divergence_bits(logits, steered) if self.compute_js else None  # [B]
            nxt = torch.empty(b, dtype=torch.int64)
            for i, r in enumerate(reqs):
                if r.temperature <= 0:
                    nxt[i] = int(torch.argmax(steered[i]))
                else:
                    row = _top_p_filter((steered[i:i + 1] / r.temperature), r.top_p)
                    nxt[i] = int(torch.multinomial(torch.softmax(row, -1)[0], 1, generator=gens[i]))
            for i, r in enumerate(reqs):
                if done[i]:
                    continue
                t = int(nxt[i])
                generated[i].append(t)
                base_lp[i].append(float(logp[i, t]))
                if step_js is not None:
                    js[i].append(float(step_js[i]))
                if t in self.eos:
                    done[i], finish[i] = True, "stop"
                elif len(generated[i]) >= r.max_tokens:
                    done[i] = True
            if all(done):
                break
            step_ids = nxt[:, None]  # [B, 1]
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.int64)], 1)
            positions = positions[:, -1:] + 1
        return [GenResult(g, lp, j if self.compute_js else None, f) for g, lp, j, f in zip(generated, base_lp, js, finish)]


class ForwardScorer:
    """One transformers forward over prompt + generation: the unsteered logits before each
    generated token, hence base log-probabilities and, with a RowSteerer, per-step JS divergence."""

    def __init__(self, model_dir: str, steerer: RowSteerer, model=None):
        from transformers import AutoModelForCausalLM

        self.model = model if model is not None else \
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.steerer = steerer

    @torch.no_grad()
    def logits(self, prompt_ids: list, generated: list) -> torch.Tensor:
        """[T, V] float32 logits predicting each generated token."""
        ids = torch.tensor([list(prompt_ids) + list(generated)], dtype=torch.int64)
        out = self.model(input_ids=ids).logits[0].float()  # [P+T, V]
        p = len(prompt_ids)
        return out[p - 1:p - 1 + len(generated)]

    def score(self, prompt_ids: list, generated: list, steer: Steer):
        """-> (base logprobs [T] list, JS bits [T] list)."""
        if not generated:
            return [], []
        z = self.logits(prompt_ids, generated)  # [T, V]
        lp = torch.log_softmax(z, -1).gather(1, torch.tensor(generated)[:, None])[:, 0]
        steered = self.steerer.along_sequence(z, steer, prompt_ids, generated)
        return lp.tolist(), js_divergence_bits(z, steered).tolist()
