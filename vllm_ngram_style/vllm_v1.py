"""vLLM V1 logits-processor interface (the CPU backend; GPU with VLLM_USE_V2_MODEL_RUNNER=0).

    --logits-processors vllm_ngram_style.vllm_v1:NgramStyleLogitsProcessor

A thin adapter: it tracks which persistent-batch rows are steered (from BatchUpdate) and, in
apply(), reads each steered row's last tokens from the live prompt/output lists and hands the
whole batch, unsteered rows marked variant -1 (never written), to the shared SteeringCore. Token history is read in apply(), never cached in
update_state(): under async scheduling the newest entry is a -1 placeholder until just before
apply() (vLLM issue #52461).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .request_args import StyleRequest
from .server_config import validate_sampling_params
from . import engine
from .engine import parse_in_engine
from .loop_guard import LOOP_GUARD_WINDOW


@dataclass
class _Row:
    variant: int
    req: StyleRequest
    prompt: list | None  # prompt token ids (vLLM's list, never copied)
    output: list  # live list of generated ids; vLLM appends to it


def _last(prompt, output, n: int) -> list:
    """The last n tokens of prompt + output, left-padded with -1."""
    if n == 0:
        return []
    tail = list(output[-n:])
    need = n - len(tail)
    if need > 0 and prompt:
        tail = list(prompt[-need:]) + tail
    return [-1] * (n - len(tail)) + tail


class NgramStyleLogitsProcessor(LogitsProcessor):
    """Batched n-gram style steering for vLLM's V1 sampler."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.core, self.cfg = engine.build_core(vllm_config, device)  # module lookup: benchmarks swap it
        self.device = torch.device(device)
        self.rows: dict[int, _Row] = {}  # persistent-batch index -> steered request
        self._cached = None  # per-row tensors of the steered rows, rebuilt when the batch changes

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_sampling_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # steering changes greedy choices

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            req = parse_in_engine(params, self.cfg)
            if req is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row(self.core.variant_id(req.style, req.mode), req, prompt, output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb
        self._cached = None

    def _row_tensors(self, batch: int):
        """Full-batch per-row state, rebuilt only when the batch changes: unsteered rows carry
        variant -1, which both ops skip without writing, so no gather/scatter of logits rows is
        needed (a copy of half a 1024 x 128k batch costs more than the steering itself)."""
        if self._cached is None or self._cached[0] != batch:
            idx = sorted(self.rows)
            rows = [self.rows[i] for i in idx]
            sizes = sorted({r.req.loop_guard for r in rows if r.req.loop_guard})
            dev = self.device
            index = torch.tensor(idx, dtype=torch.int64)  # [S] steered batch rows

            def full(values, fill, dtype):  # [batch] with the steered rows' values scattered in
                out = torch.full((batch,), fill, dtype=dtype)
                out[index] = torch.tensor(values, dtype=dtype)
                return out.to(dev)

            self._cached = (
                batch, rows, index,
                full([r.variant for r in rows], -1, torch.int64),  # [B]
                full([r.req.strength for r in rows], 0.0, torch.float32),  # [B]
                full([r.req.adaptive for r in rows], False, torch.bool) if any(r.req.adaptive for r in rows) else None,
                full([r.req.loop_guard for r in rows], 0, torch.int32) if sizes else None,  # [B]
                sizes,
                # [B] nats below the unsteered logit for guarded tokens; None when no row asks
                full([r.req.guard_penalty_nats for r in rows], 0.0, torch.float32)
                if any(r.req.loop_penalty for r in rows) else None,
            )
        return self._cached

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits  # zero cost when nothing is steered
        batch = logits.shape[0]
        _, rows, index, variant, strength, adaptive, guard, sizes, penalty = self._row_tensors(batch)
        n = self.core.context_len
        # Read the history now: the live lists are complete (placeholders patched) only here.
        context = torch.full((batch, n), -1, dtype=torch.int64)  # [B, max_order-1]
        context[index] = torch.tensor([_last(r.prompt, r.output, n) for r in rows], dtype=torch.int64).reshape(len(rows), n)
        history = None
        if sizes:
            w = LOOP_GUARD_WINDOW
            history = torch.full((batch, w), -1, dtype=torch.int64)  # [B, W] recent generated tokens
            history[index] = torch.tensor([[-1] * (w - len(r.output[-w:])) + list(r.output[-w:]) for r in rows],
                                          dtype=torch.int64)
            history = history.to(self.device)
        return self.core.apply(logits, variant, strength, context.to(self.device), adaptive, guard, sizes, history,
                               penalty)
