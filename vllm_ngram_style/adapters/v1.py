"""vLLM V1 protocol: track the steered rows of the persistent batch; steer them in apply().

update_state() follows BatchUpdate (removed, then added, then moved) and keeps, per steered row,
its parsed request and vLLM's live prompt/output lists. apply() hands the whole batch to the core
(unsteered rows carry variant -1, which every op skips without writing, so no logits rows are
gathered or scattered: a copy of half a 1024 x 128k batch would cost more than the steering).
Token history is read in apply(), never cached in update_state(): under async scheduling the
newest entry is a -1 placeholder until just before apply() (vLLM issue #52461).

Host work per step: the per-row fields (variant, strength, flags) live in host arrays written
row by row as BatchUpdates add, remove and move requests (O(changes) per step, not O(batch):
under continuous batching some request joins or leaves at most steps). The contexts (last
max_order-1 tokens) are built each step by C-level iteration over the live lists; on CPU the
arrays are the tensors the op reads, on a device the contexts and loop-guard windows go through
reused host buffers (pinned when vLLM says pinning works) and are copied without blocking.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..engine import EngineStyles, build_core, parse_in_engine
from ..loop_guard import LOOP_GUARD_WINDOW

_RING = 4  # host buffer sets in rotation on a device: more than the steps vLLM keeps in flight

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.sample.logits_processor import BatchUpdate

    from ..config import StyleConfig
    from ..request_args import StyleRequest
    from ..steering_core import SteeringCore


@dataclass
class SteeredRow:
    """One steered request in the persistent batch."""

    variants: tuple  # the core's variant id of each (style, mode) of the request (several for a blend)
    req: StyleRequest
    prompt: list | None  # prompt token ids (vLLM's list, never copied)
    output: list  # live list of generated ids; vLLM appends to it
    window: np.ndarray | None = None  # [LOOP_GUARD_WINDOW] int64 last generated ids, right-aligned, -1 padded
    seen: int = 0  # len(output) when the window was last brought up to date

    def recent(self) -> np.ndarray:
        """The loop guard's window, updated with the tokens generated since the last step (usually
        one), so a step costs O(new tokens) per row instead of copying the whole window from Python."""
        w = LOOP_GUARD_WINDOW
        if self.window is None:
            self.window = np.full(w, -1, dtype=np.int64)
        n = len(self.output)
        k = n - self.seen
        if k >= w or k < 0:
            tail = self.output[-w:]
            self.window[:] = -1
            self.window[w - len(tail):] = tail
        elif k:
            self.window[:-k] = self.window[k:]
            self.window[-k:] = self.output[n - k:n]
        self.seen = n
        return self.window


class RowFields:
    """The steering fields of every row of the persistent batch as host arrays, and each row's live
    token lists, written one row at a time (set / clear) as requests join, leave and move. Capacity
    grows with the highest index seen; K (blend columns) with the widest blend seen."""

    def __init__(self, context_len: int):
        self.pad = [-1] * context_len  # the context source of a row without a steered request
        self.sources: list = []  # [C] a steered row's live output list, else pad
        self.prompts: list = []  # [C] a steered row's prompt list (or None), else None
        self.variant = np.full((0, 1), -1, np.int64)  # [C, K] variant ids, -1 none
        self.strength = np.zeros((0, 1), np.float32)  # [C, K]
        self.adaptive = np.zeros(0, np.bool_)  # [C]
        self.guard = np.zeros(0, np.int32)  # [C] loop-guard n-gram size, 0 off
        self.penalty = np.zeros(0, np.float32)  # [C] nats below unsteered for guarded tokens
        self.generation = 0  # bumped whenever the arrays above are replaced (views of old ones go stale)
        # How many rows use each optional feature, kept as rows change: the batch's tensors can tell
        # whether they still fit without a pass over the rows.
        self.n_adaptive = self.n_penalty = 0
        self.guard_counts: dict = {}  # loop-guard n-gram size -> rows using it

    def presence(self) -> tuple:
        """(any adaptive row, any loop-penalty row, the loop-guard sizes in use): what shapes apply()."""
        return self.n_adaptive > 0, self.n_penalty > 0, tuple(sorted(self.guard_counts))

    def _forget(self, i: int) -> None:
        """Take row i's optional features out of the counts (before it is overwritten)."""
        if self.adaptive[i]:
            self.n_adaptive -= 1
        g = int(self.guard[i])
        if g:
            self.guard_counts[g] -= 1
            if not self.guard_counts[g]:
                del self.guard_counts[g]
        if self.penalty[i]:
            self.n_penalty -= 1

    @property
    def capacity(self) -> int:
        return self.adaptive.shape[0]

    def reserve(self, rows: int, k: int = 1) -> None:
        """Room for rows [0, rows) and k blend columns; existing values kept, new ones unsteered."""
        c, k0 = self.variant.shape
        if rows <= c and k <= k0:
            return
        c2, k2 = max(rows, 2 * c), max(k, k0)
        variant, strength = np.full((c2, k2), -1, np.int64), np.zeros((c2, k2), np.float32)
        variant[:c, :k0], strength[:c, :k0] = self.variant, self.strength
        self.variant, self.strength = variant, strength
        for name in ("adaptive", "guard", "penalty"):
            old = getattr(self, name)
            new = np.zeros(c2, old.dtype)
            new[:c] = old
            setattr(self, name, new)
        self.sources += [self.pad] * (c2 - c)  # in place: the lists stay the same objects
        self.prompts += [None] * (c2 - c)
        self.generation += 1

    def set(self, i: int, row: SteeredRow) -> None:
        k = len(row.variants)
        self.reserve(i + 1, k)
        self._forget(i)
        req = row.req
        if self.variant.shape[1] == 1:  # no blend seen: scalar writes (a slice assignment costs ~5x more)
            self.variant[i, 0] = row.variants[0]
            self.strength[i, 0] = req.strength
        else:
            self.variant[i] = -1
            self.variant[i, :k] = row.variants
            self.strength[i] = 0.0
            self.strength[i, :k] = [w for _, w in req.components]
        penalty = req.guard_penalty_nats if req.loop_penalty else 0.0
        self.adaptive[i], self.guard[i], self.penalty[i] = req.adaptive, req.loop_guard, penalty
        self.sources[i], self.prompts[i] = row.output, row.prompt
        self.n_adaptive += bool(req.adaptive)
        self.n_penalty += bool(self.penalty[i])
        if req.loop_guard:
            self.guard_counts[req.loop_guard] = self.guard_counts.get(req.loop_guard, 0) + 1

    def clear(self, i: int) -> None:
        if i < self.capacity:
            self._forget(i)
            self.variant[i] = -1
            self.strength[i] = 0.0
            self.adaptive[i] = False
            self.guard[i] = 0
            self.penalty[i] = 0.0
            self.sources[i], self.prompts[i] = self.pad, None


@dataclass
class BatchTensors:
    """Per-row state of the whole persistent batch for apply(), from RowFields. On CPU the tensors are
    views of its arrays, which rows write in place, so they are rebuilt only when their shape changes
    (batch size, reallocated arrays, an optional feature coming into or out of use); on a device
    they are copies, rebuilt whenever a row changed."""

    key: tuple  # (batch, RowFields.generation, RowFields.presence()) when built
    batch: int  # B, rows of the logits
    sources: list  # [>= B] RowFields.sources: per batch row a steered row's live output list, else pad
    prompts: list  # [>= B] RowFields.prompts: per batch row a steered row's prompt list (or None), else None
    variant: torch.Tensor  # [B] int64, or [B, K] for blends of up to K styles; -1 unsteered / no style (device)
    strength: torch.Tensor  # [B] or [B, K] float32 (device)
    adaptive: torch.Tensor | None  # [B] bool, None when no row asks (device)
    guard: torch.Tensor | None  # [B] int32 n-gram size, 0 off; None when no row asks (device)
    guard_sizes: list  # the distinct nonzero guard sizes
    guarded: list  # [G] SteeredRow of the rows with a loop guard, in row order
    guarded_index: np.ndarray  # [G] int64 their batch rows
    penalty: torch.Tensor | None  # [B] float32 nats below unsteered for guarded tokens; None if all 0


def last_tokens(prompt, output, n: int) -> list:
    """The last n tokens of prompt + output, left-padded with -1."""
    if n == 0:
        return []
    tail = list(output[-n:])
    need = n - len(tail)
    if need > 0 and prompt:
        tail = list(prompt[-need:]) + tail
    return [-1] * (n - len(tail)) + tail


class V1StyleProcessor:
    """Batched n-gram style steering for vLLM's V1 sampler."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool,
                 prepared: tuple[SteeringCore, StyleConfig] | None = None):
        setup = build_core(vllm_config, device) if prepared is None else EngineStyles(*prepared)
        self.core, self.cfg, self.live = setup.core, setup.cfg, setup.live
        self.device = torch.device(device)
        self._pin = bool(is_pin_memory) and self.device.type == "cuda"
        self.rows: dict[int, SteeredRow] = {}  # persistent-batch index -> steered request
        self.fields = RowFields(self.core.context_len)  # the same rows' steering fields and lists, by index
        self._tensors: BatchTensors | None = None
        self._dirty = True  # a row changed since self._tensors was built
        self._host: dict[tuple, torch.Tensor] = {}  # reused host buffers, by (name, ring slot)
        self._ring = 0

    def is_argmax_invariant(self) -> bool:
        return False  # steering changes greedy choices

    def _take_style_update(self) -> None:
        """At a step boundary: switch to a new live configuration when one is built (live.py), moving
        the running requests to the ids of the tables they started with."""
        swap = self.live.take()
        if swap is not None:
            self.core, self.cfg = swap.core, swap.cfg
            self.fields = RowFields(self.core.context_len)  # the new styles' context length may differ
            for i, row in self.rows.items():
                row.variants = tuple(swap.remap[v] if v >= 0 else -1 for v in row.variants)
                self.fields.set(i, row)
            self._tensors = None
        if self.live.wants_references:
            self.live.report_references({v for r in self.rows.values() for v in r.variants})

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.live is not None:
            self._take_style_update()
        if batch_update is None:
            return
        from vllm.v1.sample.logits_processor import MoveDirectionality

        self._dirty = True
        touched = set(batch_update.removed)
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            touched.add(index)
            req = parse_in_engine(params, self.cfg)
            if req is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = SteeredRow(tuple(self.core.variant_id(name, req.mode) for name, _ in req.components),
                                              req, prompt, output)
        for a, b, direction in batch_update.moved:
            touched.update((a, b))
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb
        for index in touched:  # each changed index takes its final request's fields (or none)
            row = self.rows.get(index)
            if row is None:
                self.fields.clear(index)
            else:
                self.fields.set(index, row)

    def _batch_tensors(self, batch: int) -> BatchTensors:
        t = self._tensors
        if not self._dirty and t is not None and t.batch == batch:  # most steps: nothing changed
            return t
        f = self.fields
        f.reserve(batch)
        key = (batch, f.generation, f.presence())
        if t is not None and t.key == key and (self.device.type == "cpu" or not self._dirty):
            if self._dirty and t.guard is not None:  # which rows are guarded may have changed
                t.guarded_index, t.guarded = self._guarded(batch)
            self._dirty = False
            return t
        wide = f.variant.shape[1] > 1  # blends seen: [B, K] columns, else [B]

        def view(a):  # [B] (or [B, K]) rows of a field; on CPU the array itself, no copy
            return self._to_device(torch.from_numpy(a[:batch] if a.ndim == 1 or wide else a[:batch, 0]))

        adaptive, penalty, sizes = key[2]
        guarded_index, guarded = self._guarded(batch) if sizes else (np.zeros(0, np.int64), [])
        self._tensors = BatchTensors(
            key, batch, f.sources, f.prompts, variant=view(f.variant), strength=view(f.strength),
            adaptive=view(f.adaptive) if adaptive else None, guard=view(f.guard) if sizes else None,
            guard_sizes=list(sizes), guarded=guarded, guarded_index=guarded_index,
            penalty=view(f.penalty) if penalty else None)
        self._dirty = False
        return self._tensors

    def _guarded(self, batch: int) -> tuple[np.ndarray, list]:
        """[G] int64 batch rows with a loop guard, and their SteeredRows."""
        index = np.flatnonzero(self.fields.guard[:batch]).astype(np.int64)
        return index, list(map(self.rows.__getitem__, index.tolist()))

    def _buffer(self, name: str, shape: tuple) -> torch.Tensor:
        """A reused host int64 buffer, pinned when pinning works (then copied without blocking). On a
        device, buffers rotate over _RING steps, so a pending copy's source is never rewritten."""
        key = (name, self._ring)
        buf = self._host.get(key)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=torch.int64, pin_memory=self._pin)
            self._host[key] = buf
        return buf

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return host if self.device.type == "cpu" else host.to(self.device, non_blocking=self._pin)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits  # zero cost when nothing is steered
        t = self._batch_tensors(logits.shape[0])
        if self.device.type != "cpu":
            self._ring = (self._ring + 1) % _RING
        n = self.core.context_len
        # Read the history now: the live lists are complete (placeholders patched) only here.
        context = self._contexts(t, n)  # [B, max_order-1]
        history = None
        if t.guard_sizes:
            # [B, W] recent generated tokens. Only guarded rows are written: the core masks every other
            # row's history (guard 0), so stale values there are never read.
            history = self._buffer("history", (t.batch, LOOP_GUARD_WINDOW))
            history.numpy()[t.guarded_index] = np.stack([r.recent() for r in t.guarded])
            history = self._to_device(history)
        return self.core.apply(logits, t.variant, t.strength, context, t.adaptive, t.guard, t.guard_sizes, history,
                               t.penalty)

    def _contexts(self, t: BatchTensors, n: int) -> torch.Tensor:
        """[B, n] int64: each steered row's last n tokens (prompt + output, -1 padded), -1 rows elsewhere.
        Built by C-level iteration (map, itemgetter, fromiter) over the live lists straight into the
        array the op reads: a Python loop, or a fill plus a scatter into a reused buffer, cost more than
        the op itself at small vocabularies (the tiny model's decode step is ~1 ms)."""
        srcs = t.sources if len(t.sources) == t.batch else t.sources[:t.batch]
        if n and min(map(len, srcs)) < n:  # a request just started: its context reaches into the prompt
            lens = np.fromiter(map(len, srcs), np.int64, len(srcs))  # [B]
            srcs = list(srcs)
            for i in np.flatnonzero(lens < n).tolist():
                srcs[i] = last_tokens(t.prompts[i], srcs[i], n)
        if n:
            pick = itemgetter(*range(-n, 0))  # a list's last n items (one int if n == 1)
            tokens = chain.from_iterable(map(pick, srcs)) if n > 1 else map(pick, srcs)
            block = np.fromiter(tokens, np.int64, t.batch * n).reshape(t.batch, n)  # [B, n]
        else:
            block = np.empty((t.batch, 0), np.int64)
        if self.device.type == "cpu":
            return torch.from_numpy(block)
        host = self._buffer("context", (t.batch, n))  # pinned when pinning works: the copy does not block
        host.numpy()[:] = block
        return self._to_device(host)
