"""Style packs made from synthetic compiled styles, so benchmarks can build a SteeringCore through
its ordinary constructor where no corpus, tokenizer or pack file exists (the GPU machines)."""
from __future__ import annotations


def pack_from_compiled(style, vocab_size: int, smoothing_k: float = 1e-3, weights=(0.1, 0.3, 0.6)):
    """A StylePack whose exact-mode compilation gives back ``style`` (a synthetic CompiledStyle from
    kernels/synthetic.py, deltas w_n log(1 + C / k)): counts recovered as k (exp(delta / w_n) - 1).
    Lets benchmarks build a SteeringCore through its ordinary constructor where no pack files exist."""
    import numpy as np

    from ..counting import OrderTable
    from ..pack import StylePack

    tables = []
    for o, w in zip(style.orders, weights):
        offsets = np.asarray(o.offsets, dtype=np.int64)  # [C+1]
        counts = np.rint(np.expm1(np.asarray(o.deltas, np.float64) / w) * smoothing_k).astype(np.int64)  # [E]
        totals = np.zeros(offsets.shape[0] - 1, np.int64)  # [C]
        np.add.at(totals, np.repeat(np.arange(totals.shape[0]), np.diff(offsets)), counts)
        ctx = np.asarray(o.context_tokens, np.int32).reshape(totals.shape[0], o.order - 1)  # [C, n-1]
        tables.append(OrderTable(o.order, ctx, totals, offsets, np.asarray(o.tokens, np.int32), counts))
    unigram = np.zeros(vocab_size, np.int64)  # [V]
    np.add.at(unigram, np.asarray(style.orders[0].tokens, np.int64), tables[0].entry_counts)
    return StylePack(tables, unigram, vocab_size, "synthetic", smoothing_k, 512, list(weights)[:len(tables)], {},
                     style.name)
