"""The steering core shared by every adapter and the evaluation: tensors in, tensors out.

It owns the compiled variants (one per configured style x mode; variant id = style index x
len(modes) + mode index), the op that applies them (kernels.make_steering_op: one call shape for
every backend, so nothing here branches on it), and the two per-row extras around the op:
- adaptive strength: every strength of row r is scaled by H(softmax(z_r)) / log V, computed from
  the logits before the edit (the op computes it: adaptive.py has the formula);
- loop guard: tokens that would repeat an n-gram of the row's own recent output get their
  unsteered logit back after the edit (captured before, restored bit for bit after), or, with a
  loop penalty, that logit minus the row's penalty (strength x penalty nats).
Callers call it only when at least one row of the batch is steered; rows with no active variant
(variant -1 or strength 0 in every column) are never written.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import torch

from .kernels import make_steering_op
from .kernels.reference import history_window
from .loop_guard import LOOP_GUARD_WINDOW, capture_banned, guard_banned_tokens, restore_banned
from .modes import compile_style

logger = logging.getLogger(__name__)


class SteeringCore:
    """Compiled styles and the op that applies them to a batch of logits rows."""

    def __init__(self, packs: Mapping, modes: Sequence[str], device, backend: str | None = None,
                 compiled: Mapping | None = None, aliases: Mapping | None = None):
        """packs: {key: StylePack}; compiled: {(key, mode): CompiledStyle} already compiled (reused, not
        recompiled: live style updates); aliases: {request name: key} for names that are not keys."""
        self.device = torch.device(device)
        self.styles = sorted(packs)
        self.modes = tuple(modes)
        compiled = compiled or {}
        # [variant] -> CompiledStyle; variant id = style index * len(modes) + mode index
        self.variants = [compiled.get((s, m)) or compile_style(packs[s], m, name=s)
                         for s in self.styles for m in self.modes]
        self._ids = {(v.name, v.mode): i for i, v in enumerate(self.variants)}
        self.aliases = dict(aliases or {})
        self.max_order = max(v.max_order for v in self.variants)
        self.op = make_steering_op(self.variants, self.device, backend)
        self.context_len = self.max_order - 1  # tokens of history the op reads per row

    @property
    def backend(self) -> str:
        return self.op.backend

    def variant_id(self, style: str, mode: str) -> int:
        return self._ids[(self.aliases.get(style, style), mode)]

    # ---- row form: the caller gathered each row's context (V1 adapter, evaluation) ---------------

    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor,
              adaptive: torch.Tensor | None = None, guard: torch.Tensor | None = None,
              guard_sizes: Sequence[int] = (), history: torch.Tensor | None = None,
              guard_penalty: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] or [R, K] int (-1 = none); strength the same shape,
        float32; context [R, max_order-1] int64 right-aligned, -1 padded; adaptive [R] bool or None;
        guard [R] int (0 = off) and guard_sizes (the distinct nonzero values, known on the host);
        history [R, H] int64: recent generated tokens, right-aligned, -1 padded (guard only);
        guard_penalty [R] float32 nats below the unsteered logit for guarded tokens, or None (0)."""
        if adaptive is None and not guard_sizes:  # plain steering: straight to the op (a small step's
            return self.op.apply(logits, variant, strength, context)  # Python adds up at ~1 ms a step)

        def edit(row_scale):
            self.op.apply(logits, variant, strength, context, row_scale=row_scale)

        return self._steer(logits, edit, adaptive, guard, guard_sizes, history, guard_penalty)

    # ---- history form: context read from the device token history (V2 adapter) -----------------

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           slot_adaptive: torch.Tensor | None = None, slot_guard: torch.Tensor | None = None,
                           guard_sizes: Sequence[int] = (), prompt_len: torch.Tensor | None = None,
                           slot_guard_penalty: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V], no host sync. row_slot [R] (row -> request slot);
        row_last_pos [R]: index in all_token_ids [S, L] of each row's NEWEST known token;
        slot_variant [S] or [S, K] int32 (-1 none); slot_strength the same shape, float32;
        slot_adaptive [S] bool; slot_guard [S] int32 (0 = off) with guard_sizes its distinct nonzero
        values in this batch; prompt_len [S]: where each slot's generated tokens start (the loop
        guard's window); slot_guard_penalty [S] float32 nats (strength x loop penalty) or None."""
        if getattr(self.op, "fuses_history_extras", False):  # the Triton op reads these per slot in its kernel
            self.op.apply_from_history(logits, row_slot, row_last_pos, all_token_ids, slot_variant, slot_strength,
                                       slot_adaptive=slot_adaptive, slot_guard=slot_guard if guard_sizes else None,
                                       prompt_len=prompt_len, slot_guard_penalty=slot_guard_penalty if guard_sizes
                                       else None, guard_window=LOOP_GUARD_WINDOW)
            return logits
        adaptive = guard = history = penalty = None
        if slot_adaptive is not None or guard_sizes:
            # Only these torch gathers want int64 indices; the op reads int32 or int64 as given, so the
            # plain steered step adds no conversion launches.
            slot64 = row_slot.long()  # [R]; a no-op when already int64
            adaptive = slot_adaptive[slot64] if slot_adaptive is not None else None  # [R]
            if guard_sizes:
                guard = slot_guard[slot64]  # [R]
                penalty = slot_guard_penalty[slot64] if slot_guard_penalty is not None else None  # [R]
                start = prompt_len[slot64]  # [R] first generated position
                history = history_window(all_token_ids, slot64, row_last_pos, LOOP_GUARD_WINDOW, start)  # [R, W]

        def edit(row_scale):
            self.op.apply_from_history(logits, row_slot, row_last_pos, all_token_ids, slot_variant, slot_strength,
                                       row_scale=row_scale)

        return self._steer(logits, edit, adaptive, guard, guard_sizes, history, penalty)

    # ---- shared: adaptive strength and loop guard around one edit ------------------------------

    def _steer(self, logits, edit: Callable, adaptive, guard, guard_sizes, history, penalty=None):
        row_scale = None
        if adaptive is not None:
            scale = self.op.normalised_entropy(logits)  # [R] float32, from the logits before our edit
            row_scale = torch.where(adaptive.bool(), scale, torch.ones_like(scale))
        saved = []
        for g in guard_sizes:  # a handful of distinct sizes at most; rows of other sizes see no history
            own = (guard == g)[:, None]  # [R, 1]
            banned = guard_banned_tokens(torch.where(own, history, torch.full_like(history, -1)), int(g))
            saved.append((banned, capture_banned(logits, banned)))
        edit(row_scale)
        drop = penalty.to(logits.dtype)[:, None] if penalty is not None and saved else None  # [R, 1] nats
        for banned, before in saved:  # groups hold disjoint rows, so the order does not matter
            # a penalty of 0 leaves the restored value bit for bit
            restore_banned(logits, banned, before if drop is None else before - drop)
        return logits
