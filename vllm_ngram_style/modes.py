"""Steering modes: each compiles a style pack into the one sparse contract the kernels apply
(contract.py), z[r, t] += lambda_r * sum_n D_n(c_n(r), t) (see docs/steering-math.md).
- exact: D_n(c, t) = w_n log(1 + C_n(c, t) / k). Equal to adding lambda sum_n w_n log P_n(t | c_n)
  densely to every token, up to a per-row constant, which softmax ignores.
- paper: D_n(c, t) = w_n log P_n(t | c) = w_n log((C + k) / (N + k V)), only for tokens in the
  table; the faithful reproduction of arXiv 2601.16224 (it pushes observed tokens down).
- kn: the pack's backoff model (interpolated Kneser-Ney, or an imported ARPA model), exactly up to
  a per-row constant (kneser_ney.py, backoff.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .contract import CompiledOrder, CompiledStyle

if TYPE_CHECKING:
    from .pack import StylePack

DEFAULT_MODE = "exact"
SPARSE_MODES = ("exact", "paper")  # per-order deltas straight from the count tables
MODES = SPARSE_MODES + ("kn",)


def _exact_deltas(pack: StylePack, table, weight: float) -> np.ndarray:
    return weight * np.log1p(table.entry_counts.astype(np.float64) / pack.smoothing_k)


def _paper_deltas(pack: StylePack, table, weight: float) -> np.ndarray:
    k, v = pack.smoothing_k, pack.vocab_size
    totals = np.repeat(table.context_total.astype(np.float64), np.diff(table.context_offsets))
    return weight * (np.log(table.entry_counts.astype(np.float64) + k) - np.log(totals + k * v))


def available_modes() -> list[str]:
    return sorted(MODES)


def compile_style(pack: StylePack, mode: str = DEFAULT_MODE, name: str | None = None) -> CompiledStyle:
    """Derive one mode's deltas from a pack. -> CompiledStyle; ValueError for an unknown mode."""
    name = pack.name if name is None else name
    if mode == "kn":
        from .kneser_ney import compile_kn  # numpy-heavy estimation, only when asked for

        return compile_kn(pack, name)
    if mode not in SPARSE_MODES:
        raise ValueError(f"unknown style mode {mode!r}; choose one of {', '.join(available_modes())}")
    deltas = _exact_deltas if mode == "exact" else _paper_deltas
    orders = []
    for table, weight in zip(pack.tables, pack.weights):
        ctx = table.context_tokens.astype(np.int64).reshape(table.context_total.shape[0], table.order - 1)
        orders.append(CompiledOrder(table.order, ctx, table.context_offsets.astype(np.int64),
                                    table.entry_tokens.astype(np.int64), deltas(pack, table, weight)))
    return CompiledStyle(name, mode, orders)
