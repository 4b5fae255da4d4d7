"""The torch reference op: vectorised, CPU and CUDA, obviously correct; the yardstick of every
other implementation of the contract (kernels/__init__.py has the call shape).

Contexts are found by hashing (variant, context tokens) into a sorted array and comparing the
full key, so a hash collision can never apply a wrong prior. The gather of variable-length entry
slices uses repeat_interleave, which syncs on CUDA: fine for a reference, not for the GPU hot path.
"""
from __future__ import annotations

import torch

from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.contract import CompiledStyle

_MULT = 0x9E3779B97F4A7C15 - (1 << 64)  # golden-ratio constant as a signed int64


def hash_contexts(variant: torch.Tensor, ctx: torch.Tensor, seed: int) -> torch.Tensor:
    """[R] int64 variant ids and [R, m] int64 tokens -> [R] int64 hashes (wrapping arithmetic)."""
    h = variant * 1000003 + seed
    for j in range(ctx.shape[1]):
        h = (h ^ ctx[:, j]) * _MULT
        h = h ^ (h >> 31)
    return h


def history_window(all_token_ids: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor, n: int,
                   start: torch.Tensor | None = None) -> torch.Tensor:
    """The n tokens ending at row_last_pos [R] of each row's slot row_slot [R] in all_token_ids [S, L]:
    [R, n] int64, right-aligned (newest last), -1 where the position is outside [0, L) (or before
    start [R]), the slot is outside [0, S), or the stored token is negative. Vectorised, no host sync."""
    s, length = all_token_ids.shape
    slot = row_slot.long()  # [R]
    slot_ok = (slot >= 0) & (slot < s)  # [R]
    offs = torch.arange(n - 1, -1, -1, device=row_last_pos.device)  # [n]: n-1 .. 0
    pos = row_last_pos.long()[:, None] - offs[None, :]  # [R, n]
    valid = (pos >= 0) & (pos < length) & slot_ok[:, None]
    if start is not None:
        valid &= pos >= start.long()[:, None]
    tok = all_token_ids[slot.clamp(0, max(s - 1, 0))[:, None], pos.clamp(0, max(length - 1, 0))].long()  # [R, n]
    return torch.where(valid & (tok >= 0), tok, torch.full_like(tok, -1))


class _OrderIndex:
    """All variants' contexts of one order, searchable by hash; and their entries."""

    def __init__(self, order: int, variants: list[CompiledStyle], device):
        self.order = order
        ctx, var, offs, toks, deltas = [], [], [], [], []
        base = 0
        for vid, style in enumerate(variants):
            if style.max_order < order:
                continue
            o = style.orders[order - 1]
            c = o.context_tokens.shape[0]
            ctx.append(torch.as_tensor(o.context_tokens, dtype=torch.int64).reshape(c, order - 1))
            var.append(torch.full((c,), vid, dtype=torch.int64))
            bounds = torch.as_tensor(o.offsets, dtype=torch.int64) + base
            offs.append(torch.stack([bounds[:-1], bounds[1:]], 1))  # [c, 2] start, end
            toks.append(torch.as_tensor(o.tokens, dtype=torch.int64))
            deltas.append(torch.as_tensor(o.deltas, dtype=torch.float64))
            base += o.tokens.shape[0]
        if not ctx:
            ctx, var, offs = [torch.zeros((0, order - 1), dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)], \
                [torch.zeros((0, 2), dtype=torch.int64)]
            toks, deltas = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.float64)]
        self.ctx = torch.cat(ctx).to(device)  # [C, n-1]
        self.variant = torch.cat(var).to(device)  # [C]
        self.span = torch.cat(offs).to(device)  # [C, 2] start, end into tokens/deltas
        self.tokens = torch.cat(toks).to(device)  # [E]
        self.deltas = torch.cat(deltas).to(device)  # [E] float64
        for seed in range(16):  # re-seed until stored keys hash uniquely, so a lookup needs one probe
            h = hash_contexts(self.variant, self.ctx, seed)
            sorted_h, perm = torch.sort(h)
            if sorted_h.numel() < 2 or bool((sorted_h[1:] != sorted_h[:-1]).all()):
                break
        else:
            raise RuntimeError("could not find a collision-free hash seed")
        self.seed, self.sorted_hash, self.perm = seed, sorted_h, perm

    def lookup(self, variant: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """[R] variant ids (-1 none) and [R, n-1] tokens (-1 missing) -> [R] context index or -1."""
        r = variant.shape[0]
        if self.sorted_hash.numel() == 0:
            return torch.full((r,), -1, dtype=torch.int64, device=variant.device)
        q = hash_contexts(variant, ctx, self.seed)
        pos = torch.searchsorted(self.sorted_hash, q).clamp(max=self.sorted_hash.numel() - 1)
        cand = self.perm[pos]
        hit = (self.sorted_hash[pos] == q) & (self.variant[cand] == variant) & (self.ctx[cand] == ctx).all(1)
        hit &= (variant >= 0) & (ctx >= 0).all(1)
        return torch.where(hit, cand, torch.full_like(cand, -1))


class ReferenceSteering:
    """z[r, t] += row_scale[r] * sum_k strength[r, k] * sum_n D_{variant[r, k], n}(c_n(r), t), in torch."""

    backend = "reference"

    def __init__(self, variants: list[CompiledStyle], device="cpu"):
        self.variants = variants
        self.device = torch.device(device)
        self.num_variants = len(variants)
        self.max_order = max((v.max_order for v in variants), default=1)
        self.context_len = self.max_order - 1
        self.index = [_OrderIndex(n, variants, self.device) for n in range(1, self.max_order + 1)]

    def entries(self, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor):
        """Rows, tokens and scaled deltas of every (row, entry) the op adds: three [M] tensors.
        variant [R] or [R, K] int; strength the same shape; context [R, >= max_order-1]."""
        if variant.dim() == 1:
            variant, strength = variant[:, None], strength[:, None]
        r, k = variant.shape
        # Blend columns become virtual rows: column j of row i is virtual row i * K + j.
        v = variant.reshape(-1).long()  # [R*K]
        s = strength.reshape(-1)  # [R*K]
        valid = (v >= 0) & (v < self.num_variants) & (s != 0)
        v = torch.where(valid, v, torch.full_like(v, -1))
        ctx_all = context.long().repeat_interleave(k, 0) if k > 1 else context.long()  # [R*K, >= m]
        rows_all, toks_all, vals_all = [], [], []
        for idx in self.index:
            m = idx.order - 1
            ctx = ctx_all[:, ctx_all.shape[1] - m:] if m else ctx_all[:, :0]
            hit = idx.lookup(v, ctx)  # [R*K]
            span = idx.span[hit.clamp(min=0)]  # [R*K, 2]
            lengths = torch.where(hit >= 0, span[:, 1] - span[:, 0], torch.zeros_like(hit))
            virt = torch.repeat_interleave(torch.arange(v.shape[0], device=v.device), lengths)
            first = torch.cumsum(lengths, 0) - lengths
            pos = span[virt, 0] + torch.arange(virt.numel(), device=v.device) - first[virt]
            rows_all.append(torch.div(virt, k, rounding_mode="floor"))
            toks_all.append(idx.tokens[pos])
            vals_all.append(idx.deltas[pos] * s[virt].to(torch.float64))
        return torch.cat(rows_all), torch.cat(toks_all), torch.cat(vals_all)

    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor,
              row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] or [R, K] int (-1: none), strength the same shape
        float, context [R, >= max_order-1] int, right-aligned, -1 where the history is shorter;
        row_scale [R] float multiplies every strength of the row (None: 1)."""
        if row_scale is not None:
            strength = strength * (row_scale if strength.dim() == 1 else row_scale[:, None])
        rows, toks, vals = self.entries(variant, strength, context)
        keep = toks < logits.shape[1]  # a pack's vocabulary may be wider than a model's logits
        logits.index_put_((rows[keep], toks[keep]), vals[keep].to(logits.dtype), accumulate=True)
        return logits

    @staticmethod
    def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
        """[R, V] logits -> [R] float32 H(softmax(z_r)) / log V (adaptive.py's formula)."""
        return adaptive_scale(logits)

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V], the contexts read from a token history all_token_ids [S, L]:
        row_slot [R] (row -> slot; outside [0, S): unsteered), row_last_pos [R] (index of each row's
        newest known token), slot_variant [S] or [S, K], slot_strength the same shape."""
        s = all_token_ids.shape[0]
        slot = row_slot.long()  # [R]
        ok = (slot >= 0) & (slot < s)  # [R]
        safe = slot.clamp(0, max(s - 1, 0))
        variant = torch.where(ok if slot_variant.dim() == 1 else ok[:, None], slot_variant[safe].long(),
                              torch.full_like(slot_variant[safe].long(), -1))  # [R] or [R, K]
        strength = slot_strength[safe]  # [R] or [R, K]
        context = history_window(all_token_ids, row_slot, row_last_pos, self.context_len)  # [R, m]
        return self.apply(logits, variant, strength, context, row_scale)
