"""Loop guard: no style boost for a token that would repeat a recent n-gram of the row's history.

An n-gram prior rewards the corpus's commonest phrases; at useful strengths a model can fall into
loops of them. For each row we find the tokens t such that (last g-1 tokens, t) already occurs in
the row's recent history, and restore their logits to the unsteered value after steering. The
model may still repeat itself; the prior just stops pushing it to.
"""
from __future__ import annotations

import torch

# The guard looks at this many of a row's most recent GENERATED tokens (the prompt is not part of
# it): long enough to see a phrase loop of a few dozen tokens, short enough that the window op
# stays cheap at batch 1024. The one definition: the adapters, the core and the evaluation read it.
LOOP_GUARD_WINDOW = 64


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
    dup[:, :-1] = banned[:, :-1] == banned[:, 1:]  # keep the last copy, so column -1 holds the row's max
    return torch.where(dup, torch.full_like(banned, -1), banned)


def capture_banned(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Values of the banned tokens before steering: [R, K] (garbage where banned == -1)."""
    return logits.gather(1, banned.clamp(min=0))


def restore_banned(logits: torch.Tensor, banned: torch.Tensor, before: torch.Tensor) -> None:
    """After steering, put banned tokens back to their unsteered values, bit for bit (in place).

    Empty (-1) slots write to the row's last banned token with that token's own value, so every
    write to one index carries the same value and scatter_ stays deterministic.
    """
    if banned.shape[1] == 0:
        return
    last = banned[:, -1:]  # [R, 1] the row's largest banned token, -1 if none
    fill = last.clamp(min=0)  # [R, 1]
    idx = torch.where(banned >= 0, banned, fill)  # [R, K]
    fill_value = torch.where(last >= 0, before[:, -1:], logits.gather(1, fill))  # [R, 1]
    logits.scatter_(1, idx, torch.where(banned >= 0, before, fill_value))
