"""vLLM V1 protocol: track the steered rows of the persistent batch; steer them in apply().

update_state() follows BatchUpdate (removed, then added, then moved) and keeps, per steered row,
its parsed request and vLLM's live prompt/output lists. apply() hands the whole batch to the core
(unsteered rows carry variant -1, which every op skips without writing, so no logits rows are
gathered or scattered: a copy of half a 1024 x 128k batch would cost more than the steering).
Token history is read in apply(), never cached in update_state(): under async scheduling the
newest entry is a -1 placeholder until just before apply() (vLLM issue #52461).

Host work per step: the per-row tensors (variant, strength, flags) are rebuilt only when the
batch changes; the contexts (last max_order-1 tokens) and loop-guard windows are written into
reused host buffers (pinned when vLLM says pinning works) and copied to the device without
blocking. On CPU the buffers are the tensors the op reads.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class BatchTensors:
    """Per-row state of the whole persistent batch, rebuilt only when the batch changes."""

    batch: int  # B, rows of the logits
    rows: list  # [S] SteeredRow, in row order
    index: np.ndarray  # [S] int64 batch rows of the steered requests (host)
    variant: torch.Tensor  # [B] int64, or [B, K] for blends of up to K styles; -1 unsteered / no style (device)
    strength: torch.Tensor  # [B] or [B, K] float32 (device)
    adaptive: torch.Tensor | None  # [B] bool, None when no row asks (device)
    guard: torch.Tensor | None  # [B] int32 n-gram size, 0 off; None when no row asks (device)
    guard_sizes: list  # the distinct nonzero guard sizes
    guarded: list  # [G] SteeredRow of the rows with a loop guard, in row order
    guarded_index: np.ndarray  # [G] int64 their batch rows
    penalty: torch.Tensor | None  # [B] float32 nats below unsteered for guarded tokens; None if all 0


_NP_DTYPES = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32, torch.bool: np.bool_}


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
        self._tensors: BatchTensors | None = None
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
            for row in self.rows.values():
                row.variants = tuple(swap.remap[v] if v >= 0 else -1 for v in row.variants)
            self._tensors = None
        if self.live.wants_references:
            self.live.report_references({v for r in self.rows.values() for v in r.variants})

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.live is not None:
            self._take_style_update()
        if batch_update is None:
            return
        from vllm.v1.sample.logits_processor import MoveDirectionality

        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            req = parse_in_engine(params, self.cfg)
            if req is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = SteeredRow(tuple(self.core.variant_id(name, req.mode) for name, _ in req.components),
                                              req, prompt, output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = rb
        self._tensors = None

    def _batch_tensors(self, batch: int) -> BatchTensors:
        if self._tensors is None or self._tensors.batch != batch:
            idx = sorted(self.rows)
            rows = [self.rows[i] for i in idx]
            sizes = sorted({r.req.loop_guard for r in rows if r.req.loop_guard})
            index = np.array(idx, dtype=np.int64)  # [S]
            k = max(len(r.variants) for r in rows)  # blend columns: 1 unless a request blends styles

            def full(values, fill, dtype, width=None):  # [B] (or [B, width]) with the steered rows' values
                # built in numpy: a handful of torch ops per field cost more than the rest of a small step
                np_dtype = _NP_DTYPES[dtype]
                out = np.full((batch,) if width is None else (batch, width), fill, dtype=np_dtype)
                out[index] = np.asarray(values, dtype=np_dtype)
                return torch.from_numpy(out).to(self.device)

            def columns(values, fill):  # per row, one value per blend component, padded to k
                return [list(v) + [fill] * (k - len(v)) for v in values]

            self._tensors = BatchTensors(
                batch, rows, index,
                variant=full([r.variants[0] for r in rows], -1, torch.int64) if k == 1 else
                full(columns([r.variants for r in rows], -1), -1, torch.int64, k),
                strength=full([r.req.strength for r in rows], 0.0, torch.float32) if k == 1 else
                full(columns([[w for _, w in r.req.components] for r in rows], 0.0), 0.0, torch.float32, k),
                adaptive=full([r.req.adaptive for r in rows], False, torch.bool)
                if any(r.req.adaptive for r in rows) else None,
                guard=full([r.req.loop_guard for r in rows], 0, torch.int32) if sizes else None,
                guard_sizes=sizes,
                guarded=[r for r in rows if r.req.loop_guard],
                guarded_index=np.array([i for i, r in zip(idx, rows) if r.req.loop_guard], dtype=np.int64),
                penalty=full([r.req.guard_penalty_nats for r in rows], 0.0, torch.float32)
                if any(r.req.loop_penalty for r in rows) else None)
        return self._tensors

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
        context = self._buffer("context", (t.batch, n))  # [B, max_order-1]
        context.fill_(-1)
        if n:
            # numpy builds the [S, n] block from Python ints several times faster than torch.tensor
            outs = [r.output for r in t.rows]
            if min(map(len, outs)) >= n:  # the common case: every output already holds n tokens
                block = np.array([o[-n:] for o in outs], dtype=np.int64)  # [S, n]
            else:
                block = np.array([last_tokens(r.prompt, r.output, n) for r in t.rows], dtype=np.int64)
            context.numpy()[t.index] = block.reshape(len(t.rows), n)
        history = None
        if t.guard_sizes:
            # [B, W] recent generated tokens. Only guarded rows are written: the core masks every other
            # row's history (guard 0), so stale values there are never read.
            history = self._buffer("history", (t.batch, LOOP_GUARD_WINDOW))
            history.numpy()[t.guarded_index] = np.stack([r.recent() for r in t.guarded])
            history = self._to_device(history)
        return self.core.apply(logits, t.variant, t.strength, self._to_device(context), t.adaptive, t.guard,
                               t.guard_sizes, history, t.penalty)
