"""vLLM Model Runner V2 logits-processor interface (the GPU default since vLLM 0.25).

    --logits-processors vllm_ngram_style.vllm_v2:NgramStyleLogitsProcessorV2

A thin adapter over the shared SteeringCore. Per-slot state (variant, strength, adaptive, loop
guard) lives on the host in numpy, is staged by add_request() and copied to the device in
apply_staged_writes() without blocking. apply() reads each row's context from the device token
history ``req_states.all_token_ids`` at ``ctx.pos``: in vLLM's LogitsContext, ``pos`` is the
position of the token fed at that row (exact row length = pos + 1), i.e. the NEWEST known token,
and the sampled token will sit at pos + 1. The only host work in apply() reads numpy arrays
indexed by ``ctx.idx_mapping_np`` (to skip unsteered batches and pick loop-guard sizes): no
device sync.

This module is imported by vLLM's API process to validate requests, so its top level stays light
(vLLM's V2 interface module is import-light too); torch and the core are imported on first use.
"""
from __future__ import annotations

from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2LogitsProcessor

from .server_config import validate_sampling_params

_RING = 4  # staging buffers in rotation; > vLLM's in-flight steps, so a pending copy's source is never rewritten


class NgramStyleLogitsProcessorV2(_V2LogitsProcessor):
    """Batched n-gram style steering for vLLM's Model Runner V2 sampler."""

    def __init__(self, vllm_config, req_states):
        import numpy as np
        import torch

        from .engine import build_core

        self._torch = torch
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        self.core, self.cfg = build_core(vllm_config, self.device)
        s = req_states.max_num_reqs
        # Host truth, one entry per request slot. Rows 0..2 of _ints: variant (-1 = unsteered),
        # adaptive (0/1), loop-guard size (0 = off).
        self._ints = np.zeros((3, s), dtype=np.int32)  # [3, S]
        self._ints[0] = -1
        # Rows of _floats: strength, loop penalty in nats (strength x style_loop_penalty).
        self._floats = np.zeros((2, s), dtype=np.float32)  # [2, S]
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._stage_i = [torch.zeros((3, s), dtype=torch.int32, pin_memory=pin) for _ in range(_RING)]  # [3, S]
        self._stage_f = [torch.zeros((2, s), dtype=torch.float32, pin_memory=pin) for _ in range(_RING)]  # [2, S]
        self._ring = 0
        self._dev_i = torch.from_numpy(self._ints.copy()).to(self.device)  # [3, S] device copy
        self._dev_f = torch.zeros((2, s), dtype=torch.float32, device=self.device)  # [2, S] device copy
        self._dirty = False

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_sampling_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        from .engine import parse_in_engine

        req = parse_in_engine(sampling_params, self.cfg)
        # Slots are recycled: overwrite every field, steered or not.
        if req is None:
            self._ints[:, req_idx] = (-1, 0, 0)
            self._floats[:, req_idx] = 0.0
        else:
            self._ints[:, req_idx] = (self.core.variant_id(req.style, req.mode), int(req.adaptive), req.loop_guard)
            self._floats[:, req_idx] = (req.strength, req.guard_penalty_nats)
        self._dirty = True
        return req is not None

    def apply_staged_writes(self) -> None:
        if not self._dirty:
            return
        self._ring = (self._ring + 1) % _RING
        si, sf = self._stage_i[self._ring], self._stage_f[self._ring]
        si.numpy()[:] = self._ints  # host-to-host; the async copy below reads this buffer later
        sf.numpy()[:] = self._floats
        self._dev_i.copy_(si, non_blocking=True)
        self._dev_f.copy_(sf, non_blocking=True)
        self._dirty = False

    def apply(self, logits, ctx):
        slots = ctx.idx_mapping_np  # [num_reqs] host copy of batch -> slot: no sync to read
        variant = self._ints[0, slots]
        steered = variant >= 0
        if not steered.any():
            return logits  # zero cost when no row of this batch is steered
        adaptive = bool(self._ints[1, slots][steered].any())
        sizes = sorted(int(g) for g in set(self._ints[2, slots][steered].tolist()) if g)
        penalty = bool(sizes) and bool(self._floats[1, slots][steered].any())
        rs = self.req_states
        self.core.apply_from_history(
            logits, ctx.expanded_idx_mapping, ctx.pos, rs.all_token_ids.gpu,
            self._dev_i[0], self._dev_f[0],
            slot_adaptive=self._dev_i[1] if adaptive else None,
            slot_guard=self._dev_i[2] if sizes else None, guard_sizes=sizes,
            prompt_len=rs.prompt_len.gpu if sizes else None,
            slot_guard_penalty=self._dev_f[1] if penalty else None)  # .gpu is re-bound by vLLM: read it each step
        return logits
