"""CpuSteering: the steering contract on CPU tensors, a compiled loop over the same tables the Triton
kernel reads (gpu_tables.py's flat int64 buffer, here its host copy), so CPU and GPU share one
table format and one set of layout tests.

Why a compiled loop: a steered row touches ~700 (context, token) entries of a V ~ 50k row. The torch
reference op needs ~170 small vectorised ops per step plus gathers and an index_put_, and torch's
entropy a full softmax with [R, V] temporaries; a loop that visits exactly those entries, in
place, costs a small fraction of one pass over the logits (benchmarks/cpu_op_bench.py).

numba compiles the loops (kernels/cpu_loops.py; numba ships its own LLVM, so users need no
compiler). Tensors are handed over as numpy views, never copied; the call does shape and dtype
checks and one compiled call, no per-row Python. The first call of each argument-type signature
compiles (seconds) or loads numba's on-disk cache (milliseconds): the constructor warms the
signatures vLLM's adapters use, so the first decoding step is not slow (``warmup_seconds``).

Threads: one by default (vLLM's CPU worker already owns the cores). threads=N or
NGRAM_STYLE_CPU_THREADS=N (0: every core numba sees) splits the rows of batches of at least
``PARALLEL_MIN_ROWS`` rows over N of numba's threads.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from vllm_ngram_style.contract import CompiledStyle
from vllm_ngram_style.errors import ConfigError, NgramStyleError
from vllm_ngram_style.settings import env_name, getenv

from . import cpu_entropy, cpu_loops as loops
from .gpu_tables import DEFAULT_LOAD_FACTOR, DEFAULT_PROBE, H_ENT_BASE, H_NUM_ENTRIES, GpuTables, build_tables

logger = logging.getLogger(__name__)

ENV_THREADS = env_name("CPU_THREADS")  # NGRAM_STYLE_CPU_THREADS (vllm_ngram_style/settings.py)
PARALLEL_MIN_ROWS = 64  # below this a step is well under a millisecond: splitting it costs more than it saves
# Logits dtype -> the numpy dtype its flat view is handed over as (bfloat16 / float16 as raw bits).
_LOGIT_VIEWS = {torch.float32: None, torch.float64: None, torch.bfloat16: torch.int16, torch.float16: torch.uint16}
_INTS = (torch.int32, torch.int64)
_FLOATS = (torch.float32, torch.float64)


def resolve_threads(threads: int | None = None) -> int:
    """Threads for the op: the argument, else NGRAM_STYLE_CPU_THREADS, else 1; 0 = every core."""
    import numba

    raw = threads if threads is not None else (getenv("CPU_THREADS") or "1")
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise ConfigError(f"{ENV_THREADS}={str(raw)[:20]!r}: give a thread count >= 1 (0: every core)")
    most = numba.config.NUMBA_NUM_THREADS
    if n == 0:
        return most
    if n > most:
        logger.warning("vllm-ngram-style: %d CPU threads asked, numba has %d: using %d", n, most, most)
    return min(n, most)


def _view(t, what: str, dtypes) -> np.ndarray:
    """A CPU tensor as a numpy view (no copy)."""
    if not isinstance(t, torch.Tensor) or not t.is_cpu:
        raise NgramStyleError(f"{what} must be a CPU torch tensor, got {type(t).__name__}"
                              + (f" on {t.device}" if isinstance(t, torch.Tensor) else ""))
    if t.dtype not in dtypes:
        raise NgramStyleError(f"{what} must be {' or '.join(str(d).replace('torch.', '') for d in dtypes)}, "
                              f"got {str(t.dtype).replace('torch.', '')}")
    return (t.detach() if t.requires_grad else t).numpy()


def _ids(t, what: str) -> np.ndarray:
    """A small int32/int64 index tensor as a C-contiguous int64 array (a copy only when it is not one
    already: these are [R]-sized), so that every id dtype runs one compiled signature."""
    return np.ascontiguousarray(_view(t, what, _INTS), dtype=np.int64)


def _columns(variant, strength, rows: int, names: tuple) -> tuple:
    """variant / strength [rows] or [rows, K] -> C-contiguous numpy [rows, K] int64 / float arrays."""
    if variant.dim() not in (1, 2) or variant.shape[0] != rows or strength.shape != variant.shape:
        raise NgramStyleError(f"{names[0]} and {names[1]} must both be [{rows}] or [{rows}, K], got "
                              f"{tuple(variant.shape)} / {tuple(strength.shape)}")
    v, s = _ids(variant, names[0]), np.ascontiguousarray(_view(strength, names[1], _FLOATS))
    return (v[:, None], s[:, None]) if v.ndim == 1 else (v, s)


def _flat_logits(logits) -> tuple[np.ndarray, int]:
    """logits [R, V] (R, V >= 1) -> (flat 1-D numpy view over its rows, row stride in elements)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_cpu or logits.dtype not in _LOGIT_VIEWS:
        raise NgramStyleError("logits must be a CPU tensor of float32, float64, bfloat16 or float16, got "
                              + (f"{logits.dtype} on {logits.device}" if isinstance(logits, torch.Tensor)
                                 else type(logits).__name__))
    r, v = logits.shape
    stride = logits.stride(0) if r > 1 else v
    if (v > 1 and logits.stride(1) != 1) or stride < v:
        raise NgramStyleError(f"logits must be [R, V] with contiguous, non-overlapping rows, got shape "
                              f"{tuple(logits.shape)} strides {logits.stride()}")
    base = logits.detach() if logits.requires_grad else logits
    view = _LOGIT_VIEWS[logits.dtype]
    if view is not None:
        base = base.view(view)
    if base.is_contiguous():  # the usual case: a numpy reshape (a view, never a copy here) is cheaper
        return base.numpy().reshape(-1), stride
    return base.as_strided(((r - 1) * stride + v,), (1,)).numpy(), stride


def _token_bound(blob: np.ndarray) -> int:
    """1 + the largest token id of the buffer's entries (0 without entries)."""
    base, n = int(blob[H_ENT_BASE]), int(blob[H_NUM_ENTRIES])
    return int((blob[base:base + n] & 0x7FFFFFFF).max()) + 1 if n else 0


class CpuSteering:
    """z[r, t] += row_scale[r] * sum_k strength[r, k] * sum_n D_{variant[r, k], n}(c_n(r), t), in place,
    compiled (kernels/__init__.py has the call shape). variants: a list of CompiledStyle; a row's variant
    id is its index here (-1: unsteered)."""

    backend = "cpu"

    def __init__(self, variants: list[CompiledStyle], device="cpu", threads: int | None = None, *,
                 probe: int = DEFAULT_PROBE, load_factor: float = DEFAULT_LOAD_FACTOR,
                 max_home_range: int | None = None, warm_up: bool = True):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise NgramStyleError(f"the CPU steering op runs on CPU tensors, not {self.device}")
        self.tables: GpuTables = build_tables(variants, None, load_factor=load_factor, probe=probe,
                                              max_home_range=max_home_range)
        self._blob = self.tables.host_blob  # [N] int64, the layout gpu_tables.py documents
        self._token_bound = _token_bound(self._blob)  # 1 + the largest token id any entry holds
        self.max_order = self.tables.max_order
        self.num_variants = self.tables.num_variants
        self.threads = resolve_threads(threads)
        self._no_scale = (np.ones(1, np.float32), np.ones(1, np.float64))  # [1] placeholders for row_scale None
        self.warmup_seconds = self.warm_up() if warm_up else 0.0

    @property
    def context_len(self) -> int:
        return self.max_order - 1

    @property
    def table_bytes(self) -> int:
        return self.tables.table_bytes

    # -- public ops --------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor,
              row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] or [R, K] int32/int64 (-1: none); strength the same shape,
        float32/float64; context [R, >= max_order-1] int32/int64, right-aligned (newest last), -1 where
        missing (only its last max_order-1 columns are read); row_scale [R] float or None. Returns logits."""
        r = self._rows(logits)
        v, s = _columns(variant, strength, r, ("variant", "strength"))
        m = self.context_len
        if context.dim() != 2 or context.shape[0] != r or context.shape[1] < m:
            raise NgramStyleError(f"context must be [{r}, >= {m}], got {tuple(context.shape)}")
        ctx = _ids(context, "context")
        scale, has_scale = self._scale(row_scale, r, s.dtype)
        if scale.dtype != s.dtype:  # mixed float32 / float64: both in float64, as torch promotes
            s, scale = s.astype(np.float64), scale.astype(np.float64)
        if r == 0 or logits.shape[1] == 0:
            return logits
        flat, stride = _flat_logits(logits)
        args = (flat, stride, logits.shape[1], self._blob, self.tables.probe, self.max_order, v, s, scale, has_scale,
                ctx, ctx.shape[1] - m, self._checked(logits))
        if self._parallel(r):
            loops.steer_context_rows_par(*args, self._chunks(r))
        else:
            loops.steer_context_rows(*args, 0, r)
        return logits

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V], each row's context read from the token history all_token_ids [S, L]
        (int32/int64) of its slot row_slot [R] (outside [0, S): unsteered), ending at row_last_pos [R]
        (the newest known token; positions outside [0, L) are missing); slot_variant [S] or [S, K],
        slot_strength the same shape; row_scale [R] or None. Returns logits."""
        r = self._rows(logits)
        if row_slot.shape != (r,) or row_last_pos.shape != (r,):
            raise NgramStyleError(f"row_slot and row_last_pos must be [{r}], got {tuple(row_slot.shape)} / "
                                  f"{tuple(row_last_pos.shape)}")
        if all_token_ids.dim() != 2:
            raise NgramStyleError(f"all_token_ids must be [S, L], got {tuple(all_token_ids.shape)}")
        n_slots = all_token_ids.shape[0]
        sv, ss = _columns(slot_variant, slot_strength, n_slots, ("slot_variant", "slot_strength"))
        ids = _view(all_token_ids, "all_token_ids", _INTS)  # [S, L] as it is: large, never copied
        slot, last = _ids(row_slot, "row_slot"), _ids(row_last_pos, "row_last_pos")
        scale, has_scale = self._scale(row_scale, r, ss.dtype)
        if scale.dtype != ss.dtype:  # mixed float32 / float64: both in float64, as torch promotes
            ss, scale = ss.astype(np.float64), scale.astype(np.float64)
        if r == 0 or logits.shape[1] == 0:
            return logits
        flat, stride = _flat_logits(logits)
        args = (flat, stride, logits.shape[1], self._blob, self.tables.probe, self.max_order, slot, last, ids, sv, ss,
                scale, has_scale, self._checked(logits))
        if self._parallel(r):
            loops.steer_history_rows_par(*args, self._chunks(r))
        else:
            loops.steer_history_rows(*args, 0, r)
        return logits

    def normalised_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """[R, V] logits -> [R] float32 H(softmax(z_r)) / log V (adaptive.py's formula), streamed over each
        row twice (no [R, V] temporary); -inf logits are fine, NaN where the torch formula is NaN."""
        r = self._rows(logits)
        out = np.empty(r, np.float32)  # [R]
        if r and logits.shape[1]:
            flat, stride = _flat_logits(logits)
            if self._parallel(r):
                cpu_entropy.entropy_rows_par(flat, stride, logits.shape[1], out, self._chunks(r))
            else:
                cpu_entropy.entropy_rows(flat, stride, logits.shape[1], out, 0, r)
        else:
            out[:] = np.nan  # what the torch formula gives for V = 0
        return torch.from_numpy(out)

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _rows(logits) -> int:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise NgramStyleError(f"logits must be a [R, V] tensor, got {getattr(logits, 'shape', type(logits))}")
        return logits.shape[0]

    def _scale(self, row_scale, r: int, like) -> tuple[np.ndarray, bool]:
        if row_scale is None:  # a placeholder of the strengths' dtype (never read): one signature either way
            return self._no_scale[1 if like == np.float64 else 0], False
        if row_scale.shape != (r,):
            raise NgramStyleError(f"row_scale must be [{r}], got {tuple(row_scale.shape)}")
        return _view(row_scale, "row_scale", _FLOATS), True

    def _checked(self, logits) -> bool:
        """Whether the loops must skip entries whose token is >= the logits' width (only when the pack's
        vocabulary is wider than the logits: the check costs ~15% of the edit)."""
        return logits.shape[1] < self._token_bound

    def _parallel(self, r: int) -> bool:
        if self.threads <= 1 or r < PARALLEL_MIN_ROWS:
            return False
        import numba

        numba.set_num_threads(self.threads)  # per calling thread; cheap
        return True

    def _chunks(self, r: int) -> int:
        return min(r, 4 * self.threads)  # a few chunks per thread: rows differ in cost

    def warm_up(self) -> float:
        """Compile (or load from numba's cache) the signatures vLLM's adapters use; returns seconds taken."""
        t0 = time.perf_counter()
        m = self.context_len
        saved, self.threads = self.threads, 1
        try:
            for threads in sorted({1, saved}):
                self.threads = threads
                rows = PARALLEL_MIN_ROWS if threads > 1 else 1
                logits = torch.zeros(rows, 8)  # [rows, V] float32
                # V1 adapter / evaluation: int64 ids, float32 strengths, int64 contexts.
                self.apply(logits, torch.zeros(rows, dtype=torch.int64), torch.ones(rows),
                           torch.zeros(rows, m, dtype=torch.int64))
                # V2 adapter: int32 slot mapping and history, int64 positions, int32 per-slot variants.
                self.apply_from_history(logits, torch.zeros(rows, dtype=torch.int32), torch.zeros(rows, dtype=torch.int64),
                                        torch.zeros(1, 4, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                                        torch.ones(1))
                self.normalised_entropy(logits)
        finally:
            self.threads = saved
        return time.perf_counter() - t0
