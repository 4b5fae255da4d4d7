"""The steering core shared by the V1 and V2 logits processors.

It owns the compiled variants (one per configured style x mode), the op that applies them (the
Triton kernel on CUDA, the torch reference elsewhere or as a fallback), and the two per-row extras
around the op:
- adaptive strength: lambda_r *= H(softmax(z_r)) / log V, computed from the logits before the edit;
- loop guard: tokens that would repeat an n-gram of the row's own recent output get their
  unsteered logit back after the edit (captured before, restored bit for bit after), or, with a
  loop penalty, that logit minus the row's penalty (strength x penalty nats).
Adapters call it only when at least one row of the batch is steered; rows with variant -1 (or
strength 0) are never written.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import torch

from .adaptive import adaptive_scale
from .loop_guard import capture_banned, guard_banned_tokens, restore_banned
from .modes import compile_style
from .reference_op import ReferenceSteering

logger = logging.getLogger(__name__)

# The loop guard looks at this many of a row's most recent generated tokens: long enough to see a
# phrase loop of a few dozen tokens, short enough that the window op stays cheap at batch 1024.
LOOP_GUARD_WINDOW = 64
ENV_BACKEND = "VLLM_NGRAM_STYLE_BACKEND"  # auto (default), triton, reference
BACKENDS = ("auto", "triton", "reference")


def _make_triton(variants, device):
    from .kernels.launcher import TritonSteering  # lazy: triton is only needed on this path

    return TritonSteering(variants, device)


class SteeringCore:
    """Compiled styles and the op that applies them to a batch of logits rows."""

    def __init__(self, packs: dict, modes: Sequence[str], device, backend: str | None = None):
        backend = (backend or os.environ.get(ENV_BACKEND) or "auto").lower()
        if backend not in BACKENDS:
            from .errors import ConfigError

            raise ConfigError(f"{ENV_BACKEND}={backend!r}: choose one of {', '.join(BACKENDS)}")
        self.device = torch.device(device)
        self.styles = sorted(packs)
        self.modes = tuple(modes)
        # variant id = style index * len(modes) + mode index; [variant] -> CompiledStyle
        self.variants = [compile_style(packs[s], m, name=s) for s in self.styles for m in self.modes]
        self._ids = {(v.name, v.mode): i for i, v in enumerate(self.variants)}
        self.max_order = max(v.max_order for v in self.variants)
        self.op, self.backend = None, "reference"
        if backend == "triton" or (backend == "auto" and self.device.type == "cuda"):
            try:
                self.op, self.backend = _make_triton(self.variants, self.device), "triton"
            except Exception as exc:  # missing kernel or triton: the reference is correct, only slower
                if backend == "triton":
                    raise
                logger.warning("vllm-ngram-style: Triton kernel unavailable (%s); using the torch reference op", exc)
        if self.op is None:
            self.op = ReferenceSteering(self.variants, self.device)
        self.context_len = self.max_order - 1  # tokens of history the op reads per row

    def variant_id(self, style: str, mode: str) -> int:
        return self._ids[(style, mode)]

    # ---- row form: the caller gathered each row's context (V1 adapter) -------------------------

    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor,
              adaptive: torch.Tensor | None = None, guard: torch.Tensor | None = None,
              guard_sizes: Sequence[int] = (), history: torch.Tensor | None = None,
              guard_penalty: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] int64 (-1 = unsteered); strength [R] float32;
        context [R, max_order-1] int64 right-aligned, -1 padded; adaptive [R] bool or None;
        guard [R] int (0 = off) and guard_sizes (the distinct nonzero values, known on the host);
        history [R, H] int64: recent generated tokens, right-aligned, -1 padded (guard only);
        guard_penalty [R] float32 nats below the unsteered logit for guarded tokens, or None (0)."""
        def edit(row_scale):
            if self.backend == "triton":
                self.op.apply(logits, variant, strength, context, row_scale=row_scale)
            else:
                s = strength if row_scale is None else strength * row_scale
                self.op.apply(logits, variant.long(), s, context)

        return self._steer(logits, edit, adaptive, guard, guard_sizes, history, guard_penalty)

    # ---- history form: context read from the device token history (V2 adapter) -----------------

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           slot_adaptive: torch.Tensor | None = None, slot_guard: torch.Tensor | None = None,
                           guard_sizes: Sequence[int] = (), prompt_len: torch.Tensor | None = None,
                           slot_guard_penalty: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V], no host sync. row_slot [R] (row -> request slot);
        row_last_pos [R]: index in all_token_ids [S, L] of each row's NEWEST known token;
        slot_variant [S] int32 (-1 unsteered); slot_strength [S] float32; slot_adaptive [S] bool;
        slot_guard [S] int32 (0 = off) with guard_sizes its distinct nonzero values in this batch;
        prompt_len [S]: where each slot's generated tokens start (the loop guard's window);
        slot_guard_penalty [S] float32 nats (strength x loop penalty) or None."""
        # The kernel reads int32 or int64 as given; only the torch gathers below want int64, and
        # converting lazily keeps the Triton path free of extra launches and fresh pointers.
        if slot_adaptive is not None or guard_sizes or self.backend != "triton":
            slot64, pos64 = row_slot.long(), row_last_pos.long()  # [R]; no-ops when already int64
        adaptive = slot_adaptive[slot64] if slot_adaptive is not None else None  # [R]
        guard = history = penalty = None
        if guard_sizes:
            guard = slot_guard[slot64]  # [R]
            penalty = slot_guard_penalty[slot64] if slot_guard_penalty is not None else None  # [R]
            start = prompt_len[slot64].long()  # [R] first generated position
            history = _window(all_token_ids, slot64, pos64, LOOP_GUARD_WINDOW, start)

        def edit(row_scale):
            if self.backend == "triton":
                self.op.apply_from_history(logits, row_slot, row_last_pos, all_token_ids, slot_variant,
                                           slot_strength, row_scale=row_scale)
            else:
                variant = slot_variant[slot64].long()  # [R]
                strength = slot_strength[slot64]  # [R]
                s = strength if row_scale is None else strength * row_scale
                context = _window(all_token_ids, slot64, pos64, self.context_len, None)
                self.op.apply(logits, variant, s, context)

        return self._steer(logits, edit, adaptive, guard, guard_sizes, history, penalty)

    # ---- shared: adaptive strength and loop guard around one edit ------------------------------

    @staticmethod
    def _steer(logits, edit: Callable, adaptive, guard, guard_sizes, history, penalty=None):
        row_scale = None
        if adaptive is not None:
            scale = adaptive_scale(logits)  # [R] float32, from the logits before our edit
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


def build_core(vllm_config, device, backend: str | None = None):
    """Engine-side start-up shared by both adapters: config, packs, tokenizer check, compile.
    -> (SteeringCore, StyleConfig). Raises ConfigError with a message saying what to fix."""
    from . import server_config
    from .errors import ConfigError

    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError("vllm-ngram-style does not support speculative decoding: steering must see every "
                          "committed token. Remove the speculative decoding options or the style processor.")
    cfg = server_config.config_from_vllm_config(vllm_config)
    fp, vocab = server_config.served_tokenizer_identity(vllm_config)
    packs = server_config.load_packs(cfg, fp, vocab)
    try:
        core = SteeringCore(packs, cfg.modes, device, backend)
    except ValueError as exc:  # an unknown mode in the configuration
        raise ConfigError(f"ngram_style modes {list(cfg.modes)}: {exc}") from exc
    server_config.register_active(cfg)
    logger.info("vllm-ngram-style: styles %s; modes %s; %s op on %s", ", ".join(core.styles),
                ", ".join(core.modes), core.backend, core.device)
    return core, cfg


def parse_in_engine(params, cfg):
    """Parse a request's extras in the engine, where an exception would kill it. Requests were
    validated at admission, so a failure here means a caller bypassed validation: log it and
    leave that request unsteered. -> StyleRequest or None."""
    from .errors import RequestError
    from .request_args import parse_request_args

    try:
        req = parse_request_args(getattr(params, "extra_args", None), cfg.names, cfg.modes)
    except RequestError as exc:
        logger.error("vllm-ngram-style: unvalidated bad style arguments, request left unsteered: %s", exc)
        return None
    return None if req is None or req.strength == 0.0 else req  # strength 0 is exactly unsteered


def _window(all_token_ids: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor, n: int,
            start: torch.Tensor | None) -> torch.Tensor:
    """The n tokens ending at row_last_pos of each row's slot: [R, n] int64, right-aligned, -1 where
    the position is before 0 (or before start [R]). Vectorised gather, no host sync."""
    offs = torch.arange(n - 1, -1, -1, device=row_last_pos.device)  # [n]: n-1 .. 0
    pos = row_last_pos[:, None] - offs[None, :]  # [R, n]
    valid = pos >= 0 if start is None else pos >= start[:, None]
    tok = all_token_ids[row_slot[:, None], pos.clamp(min=0)].long()  # [R, n]
    return torch.where(valid & (tok >= 0), tok, torch.full_like(tok, -1))
