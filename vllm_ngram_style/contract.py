"""The one sparse contract every steering mode compiles into, and every kernel applies:

    z[r, t] += lambda_r * sum_n D_n(c_n(r), t)

For each order n, D_n is a list of (token, delta) pairs stored per context c (the n-1 previous
tokens; order 1 has the single empty context); absent contexts contribute nothing. These types
are plain numpy data: they know nothing of corpora, counts or packs (modes.py and backoff.py
produce them), nor of devices (kernels/ consumes them). See docs/steering-math.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CompiledOrder:
    """One order of one (style, mode) variant.

    context_tokens: [C, n-1] int64, oldest token first; offsets: [C+1] int64 (entries of context i
    are [offsets[i], offsets[i+1])); tokens: [E] int64; deltas: [E] float64.
    """

    order: int
    context_tokens: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    deltas: np.ndarray


@dataclass
class CompiledStyle:
    """A style compiled in one mode: the unit a kernel's variant id selects."""

    name: str
    mode: str
    orders: list[CompiledOrder]  # index n-1 holds order n

    @property
    def max_order(self) -> int:
        return len(self.orders)

    @property
    def num_entries(self) -> int:
        return sum(o.tokens.shape[0] for o in self.orders)
