"""Loop guard: no style boost for a token that would repeat a recent n-gram of the row's history.

An n-gram prior rewards the corpus's commonest phrases; at useful strengths a model can fall into
loops of them. For each row we find the tokens t such that (last g-1 tokens, t) already occurs in
the row's recent history, and restore their logits to the unsteered value after steering. The
model may still repeat itself; the prior just stops pushing it to.
"""
from __future__ import annotations

import torch


def guard_banned_tokens(history: torch.Tensor, g: int) -> torch.Tensor:
    """history [R, H] int64, right-aligned, -1 where absent -> [R, H-g+1] int64 banned tokens, -1 = none.

    Each row's banned tokens are distinct (duplicates replaced by -1), so they can be scattered.
    """
    r, h = history.shape
    if g < 2 or h < g:
        return torch.full((r, 0), -1, dtype=torch.int64, device=history.device)
    suffix = history[:, h - g + 1:]  # [R, g-1] the context the next token would extend
    windows = history.unfold(1, g, 1)  # [R, H-g+1, g]
    match = (windows[:, :, :-1] == suffix[:, None, :]).all(-1) & (windows >= 0).all(-1)
    match &= (suffix >= 0).all(-1, keepdim=True)
    banned = torch.where(match, windows[:, :, -1], torch.full_like(windows[:, :, -1], -1))
    banned, _ = torch.sort(banned, dim=1)
    dup = torch.zeros_like(banned, dtype=torch.bool)
    dup[:, 1:] = banned[:, 1:] == banned[:, :-1]
    return torch.where(dup, torch.full_like(banned, -1), banned)


def capture_banned(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Values of the banned tokens before steering: [R, K] (garbage where banned == -1)."""
    return logits.gather(1, banned.clamp(min=0))


def restore_banned(logits: torch.Tensor, banned: torch.Tensor, before: torch.Tensor) -> None:
    """After steering, put banned tokens back to their unsteered values (in place)."""
    idx = banned.clamp(min=0)  # [R, K]
    after = logits.gather(1, idx)
    logits.scatter_add_(1, idx, torch.where(banned >= 0, before - after, torch.zeros_like(after)))
