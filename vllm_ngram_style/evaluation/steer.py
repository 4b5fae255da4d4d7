"""Per-step steering of logits rows in plain torch, for the evaluation (not the serving path).

It reproduces what the vLLM processor does to one decoding step of a row, from the same pieces
(ReferenceSteering, adaptive_scale, the loop guard), so that it can
- drive the transformers generation backend (tests, and a fallback without vLLM), and
- re-create, position by position, the steering a generated sequence received, for the
  Jensen-Shannon divergence between the unsteered and steered next-token distributions.
Row semantics (as in vllm_ngram_style.vllm_v1):
- context: the last max_order-1 tokens of prompt + generated-so-far, right-aligned, -1 padded;
- adaptive: strength *= H(softmax(z)) / log V of the row's unsteered logits at that step;
- loop guard g: tokens that would repeat a g-gram of the row's last LOOP_GUARD_WINDOW GENERATED
  tokens (the prompt is not part of the window) keep their unsteered logit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adaptive import adaptive_scale
from ..loop_guard import capture_banned, guard_banned_tokens, restore_banned
from ..modes import compile_style
from ..kernels.reference import ReferenceSteering

# Must equal vllm_ngram_style.steering_core.LOOP_GUARD_WINDOW (a test checks when that module exists).
LOOP_GUARD_WINDOW = 64


@dataclass(frozen=True)
class Steer:
    """One request's steering: style None means unsteered."""

    style: str | None = None
    strength: float = 0.0
    mode: str = "exact"
    adaptive: bool = False
    loop_guard: int = 0
    loop_penalty: float = 0.0  # nats per unit of strength below unsteered, for guarded tokens

    @property
    def active(self) -> bool:
        return self.style is not None and self.strength != 0.0

    def extra_args(self) -> dict:
        """The request's vLLM SamplingParams.extra_args."""
        if not self.active:
            return {}
        extra = {"style": self.style, "style_strength": float(self.strength), "style_mode": self.mode,
                 "style_adaptive": int(self.adaptive), "style_loop_guard": int(self.loop_guard)}
        if self.loop_penalty:
            extra["style_loop_penalty"] = float(self.loop_penalty)
        return extra


class RowSteerer:
    """Applies heterogeneous per-row steering to a [R, V] block of logits."""

    def __init__(self, packs: dict, modes=("exact", "paper")):
        self.styles = sorted(packs)
        self.modes = tuple(modes)
        self.variants = [compile_style(packs[s], m, name=s) for s in self.styles for m in self.modes]
        self._ids = {(v.name, v.mode): i for i, v in enumerate(self.variants)}
        self.op = ReferenceSteering(self.variants, "cpu")
        self.context_len = max(v.max_order for v in self.variants) - 1

    def variant_id(self, steer: Steer) -> int:
        return self._ids[(steer.style, steer.mode)] if steer.active else -1

    def context(self, prompt: list, generated: list) -> list:
        """Last context_len tokens of prompt + generated, -1 padded on the left."""
        n = self.context_len
        tail = (list(prompt) + list(generated))[-n:] if n else []
        return [-1] * (n - len(tail)) + tail

    @staticmethod
    def history(generated: list) -> list:
        w = LOOP_GUARD_WINDOW
        tail = list(generated[-w:])
        return [-1] * (w - len(tail)) + tail

    def apply(self, logits: torch.Tensor, steers: list, contexts: list, histories: list) -> torch.Tensor:
        """In place on logits [R, V] (float32): row r gets steers[r] with context contexts[r]
        ([context_len] ids) and loop-guard history histories[r] ([LOOP_GUARD_WINDOW] ids)."""
        r = logits.shape[0]
        variant = torch.tensor([self.variant_id(s) for s in steers], dtype=torch.int64)  # [R]
        strength = torch.tensor([s.strength if s.active else 0.0 for s in steers], dtype=torch.float32)  # [R]
        if not bool((variant >= 0).any()):
            return logits
        # [R] nats, from the request's own strength (not the adaptive one), as the plugin does
        penalty = torch.tensor([s.strength * s.loop_penalty if s.active else 0.0 for s in steers], dtype=torch.float32)
        if any(s.adaptive and s.active for s in steers):
            adaptive = torch.tensor([s.adaptive for s in steers], dtype=torch.bool)  # [R]
            strength = torch.where(adaptive, strength * adaptive_scale(logits), strength)
        ctx = torch.tensor(contexts, dtype=torch.int64).reshape(r, self.context_len)  # [R, m]
        saved = []
        for g in sorted({s.loop_guard for s in steers if s.active and s.loop_guard}):
            own = torch.tensor([s.active and s.loop_guard == g for s in steers])[:, None]  # [R, 1]
            hist = torch.tensor(histories, dtype=torch.int64).reshape(r, LOOP_GUARD_WINDOW)  # [R, W]
            banned = guard_banned_tokens(torch.where(own, hist, torch.full_like(hist, -1)), g)
            saved.append((banned, capture_banned(logits, banned)))
        self.op.apply(logits, variant, strength, ctx)
        for banned, before in saved:
            restore_banned(logits, banned, before - penalty.to(before.dtype)[:, None])
        return logits

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
