"""vLLM Model Runner V2 protocol: per-slot steering state, and one device-only apply per step.

Per-slot state (variant, strength, adaptive, loop guard, loop penalty) lives on the host in numpy,
is staged by add_request() and copied to the device in apply_staged_writes() without blocking.
apply() reads each row's context from the device token history ``req_states.all_token_ids`` at
``ctx.pos``: in vLLM's LogitsContext, ``pos`` is the position of the token fed at that row (exact
row length = pos + 1), i.e. the NEWEST known token, and the sampled token will sit at pos + 1. The
only host work in apply() reads numpy arrays indexed by ``ctx.idx_mapping_np`` (to skip unsteered
batches and pick loop-guard sizes): no device sync.

Import-light on purpose (vLLM's API process imports the processor class to validate requests):
torch, numpy and the core are imported when an engine builds the processor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from ..config import StyleConfig
    from ..steering_core import SteeringCore

_RING = 4  # staging buffers in rotation; > vLLM's in-flight steps, so a pending copy's source is never rewritten


class SlotState:
    """Named per-slot arrays: the host truth (numpy), staged through pinned buffers to a device copy.

    Per slot: up to MAX_BLEND (variant id, strength) columns (a blend of styles; -1 / 0 where
    unused), the adaptive flag, the loop-guard size and the loop penalty in nats. The int32 fields
    share one [MAX_BLEND + 2, S] block (variant columns, adaptive, guard) and the float32 ones one
    [MAX_BLEND + 1, S] block (strength columns, penalty), so a step that changed any slot stages with
    two copies. Field-major, so every [S] field is a contiguous row; the [S, K] blend views of
    variant / strength are transposed (strides (1, S)), which every op reads.
    """

    def __init__(self, num_slots: int, device: torch.device):
        import numpy as np
        import torch

        from ..request_args import MAX_BLEND

        s, k = num_slots, MAX_BLEND
        self.width = k
        self.host_ints = np.zeros((k + 2, s), dtype=np.int32)  # [K+2, S]
        self.host_floats = np.zeros((k + 1, s), dtype=np.float32)  # [K+1, S]
        self.host_ints[:k] = -1
        self._rows = {"variant": slice(0, k), "adaptive": k, "guard": k + 1, "strength": slice(0, k), "penalty": k}
        pin = device.type == "cuda" and torch.cuda.is_available()
        self._stage = [(torch.zeros(self.host_ints.shape, dtype=torch.int32, pin_memory=pin),
                        torch.zeros(self.host_floats.shape, dtype=torch.float32, pin_memory=pin)) for _ in range(_RING)]
        self._ring = 0
        self.dev_ints = torch.from_numpy(self.host_ints.copy()).to(device)  # [K+2, S]
        self.dev_floats = torch.zeros(self.host_floats.shape, dtype=torch.float32, device=device)  # [K+1, S]
        self.dirty = False

    def _block(self, name: str, host: bool):
        ints = name in ("variant", "adaptive", "guard")
        if host:
            return self.host_ints if ints else self.host_floats
        return self.dev_ints if ints else self.dev_floats

    def host(self, name: str):
        """numpy view of one field (writable): [S, K] for variant / strength, else [S]."""
        row = self._rows[name]
        block = self._block(name, host=True)
        return block[row].T if isinstance(row, slice) else block[row]

    def device(self, name: str, columns: int | None = None):
        """Device view of one field; variant / strength: the first ``columns`` blend columns, [S, columns]
        (strides (1, S)), or the contiguous [S] first column when columns is 1."""
        row = self._rows[name]
        block = self._block(name, host=False)
        if isinstance(row, slice):
            return block[0] if columns == 1 else block[:columns].T
        return block[row]

    def set(self, slot: int, **values) -> None:
        for name, value in values.items():
            self.host(name)[slot] = value
        self.dirty = True

    def stage(self) -> None:
        """Copy the host truth to the device without blocking (call once per step, before the forward)."""
        if not self.dirty:
            return
        self._ring = (self._ring + 1) % _RING
        si, sf = self._stage[self._ring]
        si.numpy()[:] = self.host_ints  # host-to-host; the async copy below reads this buffer later
        sf.numpy()[:] = self.host_floats
        self.dev_ints.copy_(si, non_blocking=True)
        self.dev_floats.copy_(sf, non_blocking=True)
        self.dirty = False


class V2StyleProcessor:
    """Batched n-gram style steering for vLLM's Model Runner V2 sampler."""

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState,
                 prepared: tuple[SteeringCore, StyleConfig] | None = None):
        import torch

        from ..engine import EngineStyles, build_core

        self.req_states = req_states
        self.device = torch.device(req_states.device)
        setup = build_core(vllm_config, self.device) if prepared is None else EngineStyles(*prepared)
        self.core, self.cfg, self.live = setup.core, setup.cfg, setup.live
        self.slots = SlotState(req_states.max_num_reqs, self.device)

    def _take_style_update(self) -> None:
        """At a step boundary: switch to a new live configuration when one is built (live.py), moving
        every slot to the ids of the tables its request started with."""
        import numpy as np

        swap = self.live.take()
        if swap is None:
            return
        self.core, self.cfg = swap.core, swap.cfg
        remap = np.asarray(swap.remap + [-1], dtype=np.int32)  # [old variants + 1]: index -1 maps -1 to -1
        variant = self.slots.host("variant")
        variant[:] = remap[variant]
        self.slots.dirty = True

    def add_request(self, req_idx: int, sampling_params) -> bool:
        from ..engine import parse_in_engine

        if self.live is not None:
            self._take_style_update()

        req = parse_in_engine(sampling_params, self.cfg)
        # Slots are recycled: overwrite every field, steered or not.
        if req is None:
            self.slots.set(req_idx, variant=-1, adaptive=0, guard=0, strength=0.0, penalty=0.0)
        else:
            pad = self.slots.width - len(req.components)
            self.slots.set(req_idx, variant=[self.core.variant_id(n, req.mode) for n, _ in req.components] + [-1] * pad,
                           strength=[w for _, w in req.components] + [0.0] * pad, adaptive=int(req.adaptive),
                           guard=req.loop_guard, penalty=req.guard_penalty_nats)
        return req is not None

    def apply_staged_writes(self) -> None:
        if self.live is not None:
            self._take_style_update()
        self.slots.stage()

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        st = self.slots
        slots = ctx.idx_mapping_np  # [num_reqs] host copy of batch -> slot: no sync to read
        variant = st.host("variant")[slots]  # [num_reqs, K] host copy
        steered = variant[:, 0] >= 0
        if not steered.any():
            return logits  # zero cost when no row of this batch is steered
        columns = int((variant[steered] >= 0).sum(1).max())  # blend width of this batch: 1 without blends
        if self.live is not None and self.live.wants_references:
            import numpy as np

            self.live.report_references(np.unique(variant[steered]).tolist())
        adaptive = bool(st.host("adaptive")[slots][steered].any())
        sizes = sorted(int(g) for g in set(st.host("guard")[slots][steered].tolist()) if g)
        penalty = bool(sizes) and bool(st.host("penalty")[slots][steered].any())
        rs = self.req_states
        self.core.apply_from_history(
            logits, ctx.expanded_idx_mapping, ctx.pos, rs.all_token_ids.gpu,  # .gpu is re-bound by vLLM: read it each step
            st.device("variant", columns), st.device("strength", columns),
            slot_adaptive=st.device("adaptive") if adaptive else None,
            slot_guard=st.device("guard") if sizes else None, guard_sizes=sizes,
            prompt_len=rs.prompt_len.gpu if sizes else None,
            slot_guard_penalty=st.device("penalty") if penalty else None)
        return logits
