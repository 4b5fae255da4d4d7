"""Per-step steering of logits rows for the evaluation, through the product's own SteeringCore.

The evaluation needs the plugin's steering outside vLLM, to
- drive the transformers generation backend (tests, and a fallback without vLLM), and
- re-create, position by position, the steering a generated sequence received, for the
  Jensen-Shannon divergence between the unsteered and steered next-token distributions.
It does not re-implement any rule: a request's arguments are a StyleRequest (request_args.py),
and every step goes through SteeringCore.apply with the rows' contexts and loop-guard windows,
exactly as the V1 adapter gathers them (adapters/v1.py):
- context: the last max_order-1 tokens of prompt + generated-so-far, right-aligned, -1 padded;
- loop-guard window: the row's last LOOP_GUARD_WINDOW GENERATED tokens (not the prompt).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.v1 import last_tokens
from ..loop_guard import LOOP_GUARD_WINDOW
from ..request_args import StyleRequest
from ..steering_core import SteeringCore


@dataclass(frozen=True)
class Steer(StyleRequest):
    """A request's steering as the evaluation states it: a StyleRequest that may be unsteered
    (style None or strength 0)."""

    style: str | None = None
    strength: float = 0.0

    @property
    def active(self) -> bool:
        return self.style is not None and self.strength != 0.0

    def extra_args(self) -> dict:
        """The request's vLLM SamplingParams.extra_args ({} when unsteered)."""
        return self.to_extra_args() if self.active else {}


class RowSteerer:
    """Applies heterogeneous per-row steering to a [R, V] block of logits (CPU)."""

    def __init__(self, packs: dict, modes=("exact", "paper"), backend: str | None = "reference"):
        self.core = SteeringCore(packs, modes, "cpu", backend)
        self.context_len = self.core.context_len

    def variant_id(self, steer: Steer) -> int:
        return self.core.variant_id(steer.style, steer.mode) if steer.active else -1

    def context(self, prompt: list, generated: list) -> list:
        """Last context_len tokens of prompt + generated, -1 padded on the left."""
        return last_tokens(prompt, generated, self.context_len)

    @staticmethod
    def history(generated: list) -> list:
        """The loop guard's window: the last LOOP_GUARD_WINDOW generated tokens, -1 padded on the left."""
        return last_tokens(None, generated, LOOP_GUARD_WINDOW)

    def apply(self, logits: torch.Tensor, steers: list, contexts: list, histories: list) -> torch.Tensor:
        """In place on logits [R, V] (float32): row r gets steers[r] with context contexts[r]
        ([context_len] ids) and loop-guard window histories[r] ([LOOP_GUARD_WINDOW] ids)."""
        r = logits.shape[0]
        variant = torch.tensor([self.variant_id(s) for s in steers], dtype=torch.int64)  # [R]
        if not bool((variant >= 0).any()):
            return logits
        active = [s.active for s in steers]
        strength = torch.tensor([s.strength if a else 0.0 for s, a in zip(steers, active)], dtype=torch.float32)  # [R]
        adaptive = torch.tensor([s.adaptive and a for s, a in zip(steers, active)], dtype=torch.bool)  # [R]
        guard = torch.tensor([s.loop_guard if a else 0 for s, a in zip(steers, active)], dtype=torch.int32)  # [R]
        sizes = sorted({int(g) for g in guard.tolist() if g})
        # [R] nats, from the request's own strength (not the adaptive one), as the plugin does
        penalty = torch.tensor([s.guard_penalty_nats if a else 0.0 for s, a in zip(steers, active)], dtype=torch.float32)
        context = torch.tensor(contexts, dtype=torch.int64).reshape(r, self.context_len)  # [R, m]
        history = torch.tensor(histories, dtype=torch.int64).reshape(r, LOOP_GUARD_WINDOW) if sizes else None  # [R, W]
        return self.core.apply(logits, variant, strength, context, adaptive if bool(adaptive.any()) else None,
                               guard if sizes else None, sizes, history, penalty if bool(penalty.any()) else None)

    def along_sequence(self, logits: torch.Tensor, steer: Steer, prompt: list, generated: list) -> torch.Tensor:
        """logits [T, V]: the unsteered logits before each of the T generated tokens. Returns the
        steered logits [T, V] the row saw at each step (a new tensor)."""
        t = logits.shape[0]
        out = logits.clone()
        if not steer.active:
            return out
        contexts = [self.context(prompt, generated[:i]) for i in range(t)]
        histories = [self.history(generated[:i]) for i in range(t)] if steer.loop_guard else \
            [[-1] * LOOP_GUARD_WINDOW] * t
        return self.apply(out, [steer] * t, contexts, histories)
