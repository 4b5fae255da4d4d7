"""Steering modes: each compiles a style pack into the one sparse contract the kernels apply,

    z[r, t] += lambda_r * sum_n D_n(c_n(r), t),

a list of (token, delta) pairs per stored context and order (see docs: steering-math.md).
- exact: D_n(c, t) = w_n log(1 + C_n(c, t) / k). Equal to adding lambda sum_n w_n log P_n(t | c_n)
  densely to every token, up to a per-row constant, which softmax ignores.
- paper: D_n(c, t) = w_n log P_n(t | c) = w_n log((C + k) / (N + k V)), only for tokens in the
  table; the faithful reproduction of arXiv 2601.16224 (it pushes observed tokens down).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .pack import StylePack

DEFAULT_MODE = "exact"


@dataclass
class CompiledOrder:
    """One order of one (style, mode) variant.

    context_tokens: [C, n-1] int64; offsets: [C+1] int64; tokens: [E] int64; deltas: [E] float64.
    """

    order: int
    context_tokens: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    deltas: np.ndarray


@dataclass
class CompiledStyle:
    name: str
    mode: str
    orders: list[CompiledOrder]  # index n-1 holds order n

    @property
    def max_order(self) -> int:
        return len(self.orders)

    @property
    def num_entries(self) -> int:
        return sum(o.tokens.shape[0] for o in self.orders)


def _exact_deltas(pack: StylePack, table, weight: float) -> np.ndarray:
    return weight * np.log1p(table.entry_counts.astype(np.float64) / pack.smoothing_k)


def _paper_deltas(pack: StylePack, table, weight: float) -> np.ndarray:
    k, v = pack.smoothing_k, pack.vocab_size
    totals = np.repeat(table.context_total.astype(np.float64), np.diff(table.context_offsets))
    return weight * (np.log(table.entry_counts.astype(np.float64) + k) - np.log(totals + k * v))


# mode name -> function(pack, order table, weight) -> [E] float64 deltas. Other modules may register more.
MODE_DELTAS: dict[str, Callable] = {"exact": _exact_deltas, "paper": _paper_deltas}
# Modes that need the whole pack at once (e.g. Kneser-Ney) register a full compiler here instead.
MODE_COMPILERS: dict[str, Callable[[StylePack, str], "CompiledStyle"]] = {}
# Full compilers living in other modules, imported on first use (they register themselves above).
LAZY_MODE_MODULES: dict[str, str] = {"kn": ".kneser_ney"}


def available_modes() -> list[str]:
    return sorted(set(MODE_DELTAS) | set(MODE_COMPILERS) | set(LAZY_MODE_MODULES))


def compile_style(pack: StylePack, mode: str = DEFAULT_MODE, name: str | None = None) -> CompiledStyle:
    """Derive one mode's deltas from a pack's counts."""
    name = pack.name if name is None else name
    if mode not in MODE_COMPILERS and mode in LAZY_MODE_MODULES:
        import importlib

        importlib.import_module(LAZY_MODE_MODULES[mode], __package__)
    if mode in MODE_COMPILERS:
        return MODE_COMPILERS[mode](pack, name)
    if mode not in MODE_DELTAS:
        raise ValueError(f"unknown style mode {mode!r}; choose one of {', '.join(available_modes())}")
    orders = []
    for table, weight in zip(pack.tables, pack.weights):
        ctx = table.context_tokens.astype(np.int64).reshape(table.context_total.shape[0], table.order - 1)
        orders.append(CompiledOrder(table.order, ctx, table.context_offsets.astype(np.int64),
                                    table.entry_tokens.astype(np.int64), MODE_DELTAS[mode](pack, table, weight)))
    return CompiledStyle(name, mode, orders)
