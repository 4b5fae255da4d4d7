"""The naive per-request style processor: what a user writes without this plugin (benchmark contrast).

    --logits-processors vllm_ngram_style.naive_processor:NaiveStyleLogitsProcessor

vLLM's ``AdapterLogitsProcessor`` wraps one Python function per request and calls it once per
row per step. Each function looks its row's last 0..N-1 tokens up in Python dicts
(context tuple -> tokens and deltas of that context) and adds strength x delta to the row with
one indexed add per matched order. Same configuration (``additional_config["ngram_style"]``),
same request arguments (``style``, ``style_strength``, ``style_mode``) and the same compiled
deltas as the plugin, so for the same requests it produces the same logits (tests check this
against the plugin's V1 processor); ``style_adaptive`` and ``style_loop_guard`` are ignored.

It is deliberately written the obvious way, not tuned: per-row Python, per-row tensor ops. Its
cost is what the plugin's batched op is compared against in benchmarks/e2e_throughput.py.
"""
from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from .contract import CompiledStyle
from .modes import compile_style
from .validation import validate_sampling_params

logger = logging.getLogger(__name__)


class NaiveTables:
    """One compiled (style, mode): per order, {context tuple (oldest first): (tokens [k] int64, deltas [k] float64)},
    the tensors being views of one per-order array on ``device``."""

    def __init__(self, style: CompiledStyle, device="cpu"):
        self.max_order = style.max_order
        self.max_token = max((int(o.tokens.max()) for o in style.orders if o.tokens.size), default=-1)
        self.orders: list[dict] = []  # index n-1 holds order n
        for o in style.orders:
            table = {}
            ctx = np.asarray(o.context_tokens, dtype=np.int64).reshape(len(o.offsets) - 1, o.order - 1)  # [C, n-1]
            tokens = torch.from_numpy(np.ascontiguousarray(o.tokens, dtype=np.int64)).to(device)  # [E]
            deltas = torch.from_numpy(np.ascontiguousarray(o.deltas, dtype=np.float64)).to(device)  # [E]
            offsets = o.offsets.tolist()
            for i, key in enumerate(map(tuple, ctx.tolist())):
                a, b = offsets[i], offsets[i + 1]
                if b > a:
                    table[key] = (tokens[a:b], deltas[a:b])
            self.orders.append(table)


def steer_row(tables: NaiveTables, strength: float, prompt_ids: list, output_ids: list,
              logits_row: torch.Tensor) -> torch.Tensor:
    """One request's step: z[t] += strength * sum_n D_n(last n-1 tokens, t), in place on logits_row [V]."""
    m = tables.max_order - 1
    history = list(output_ids[-m:]) if m else []
    if len(history) < m and prompt_ids:
        history = list(prompt_ids[-(m - len(history)):]) + history
    width = logits_row.shape[0]
    for n, table in enumerate(tables.orders, 1):
        if len(history) < n - 1:
            continue  # too short a history for this order
        hit = table.get(tuple(history[len(history) - (n - 1):]) if n > 1 else ())
        if hit is None:
            continue
        tokens, deltas = hit
        if tables.max_token >= width:  # a pack's vocabulary may be wider than the logits
            keep = tokens < width
            tokens, deltas = tokens[keep], deltas[keep]
        # float64 products rounded to the logits dtype, accumulated order by order: as the plugin does.
        logits_row.index_put_((tokens,), (deltas * strength).to(logits_row.dtype), accumulate=True)
    return logits_row


class NaiveStyleLogitsProcessor(AdapterLogitsProcessor):
    """Per-request n-gram style steering through vLLM's AdapterLogitsProcessor (V1 interface)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        from .config import config_from_vllm_config
        from .styles import load_styles

        self.cfg = config_from_vllm_config(vllm_config)
        mc = vllm_config.model_config
        packs = load_styles(self.cfg, mc.tokenizer or mc.model, where="the served model")
        self.tables = {(name, mode): NaiveTables(compile_style(packs[name], mode, name=name), device)
                       for name in self.cfg.names for mode in self.cfg.modes}
        logger.info("naive style processor: %d (style, mode) tables", len(self.tables))

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_sampling_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        from .request_args import parse_request_args

        req = parse_request_args(getattr(params, "extra_args", None), self.cfg.names, self.cfg.modes)
        if req is None or req.total_strength == 0.0:
            return None
        # The plugin keeps strengths in float32; rounding here keeps the two bit-comparable.
        parts = [partial(steer_row, self.tables[(name, req.mode)], float(np.float32(w))) for name, w in req.components]
        if len(parts) == 1:
            return parts[0]

        def blend(prompt_ids, output_ids, logits_row):  # a blend: each style's own edit, one after another
            for part in parts:
                logits_row = part(prompt_ids, output_ids, logits_row)
            return logits_row

        return blend
