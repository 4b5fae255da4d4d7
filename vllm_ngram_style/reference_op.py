"""The reference steering op in torch: vectorised, CPU and CUDA, obviously correct.

It is the CPU path of the product and the yardstick for the Triton kernel. Contexts are found by
hashing (variant, context tokens) into a sorted array and comparing the full key, so a hash
collision can never apply a wrong prior. The gather of variable-length entry slices uses
repeat_interleave, which syncs on CUDA: fine for a reference, not for the GPU hot path.
"""
from __future__ import annotations

import torch

from .modes import CompiledStyle

_MULT = 0x9E3779B97F4A7C15 - (1 << 64)  # golden-ratio constant as a signed int64


def hash_contexts(variant: torch.Tensor, ctx: torch.Tensor, seed: int) -> torch.Tensor:
    """[R] int64 variant ids and [R, m] int64 tokens -> [R] int64 hashes (wrapping arithmetic)."""
    h = variant * 1000003 + seed
    for j in range(ctx.shape[1]):
        h = (h ^ ctx[:, j]) * _MULT
        h = h ^ (h >> 31)
    return h


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
    """Applies z[r, t] += strength[r] * sum_n D_n(c_n(r), t) for a set of compiled variants."""

    def __init__(self, variants: list[CompiledStyle], device="cpu"):
        self.variants = variants
        self.max_order = max((v.max_order for v in variants), default=1)
        self.index = [_OrderIndex(n, variants, device) for n in range(1, self.max_order + 1)]

    def entries(self, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor):
        """Rows, tokens and scaled deltas of every (row, entry) the op adds. context: [R, max_order-1]."""
        rows_all, toks_all, vals_all = [], [], []
        active = (variant >= 0) & (strength != 0)
        v = torch.where(active, variant, torch.full_like(variant, -1))
        for idx in self.index:
            m = idx.order - 1
            ctx = context[:, context.shape[1] - m:] if m else context[:, :0]
            hit = idx.lookup(v, ctx)  # [R]
            span = idx.span[hit.clamp(min=0)]  # [R, 2]
            lengths = torch.where(hit >= 0, span[:, 1] - span[:, 0], torch.zeros_like(hit))
            rows = torch.repeat_interleave(torch.arange(v.shape[0], device=v.device), lengths)
            first = torch.cumsum(lengths, 0) - lengths
            pos = span[rows, 0] + torch.arange(rows.numel(), device=v.device) - first[rows]
            rows_all.append(rows)
            toks_all.append(idx.tokens[pos])
            vals_all.append(idx.deltas[pos] * strength[rows].to(torch.float64))
        return torch.cat(rows_all), torch.cat(toks_all), torch.cat(vals_all)

    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor,
              context: torch.Tensor) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] int64 (-1: unsteered), strength [R] float,
        context [R, max_order-1] int64, right-aligned, -1 where the history is shorter."""
        rows, toks, vals = self.entries(variant, strength, context)
        keep = toks < logits.shape[1]  # a pack's vocabulary may be wider than a model's logits
        logits.index_put_((rows[keep], toks[keep]), vals[keep].to(logits.dtype), accumulate=True)
        return logits
