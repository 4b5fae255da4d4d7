"""TritonSteering: builds the GPU tables once and launches the steering kernel, one launch per step.

Launch paths (host cost is what matters: the kernel itself takes microseconds, see gpu-notes.md):
- "standard" / "fast" (default on CUDA): fast_launch.py (the fast path checks itself at first use
  and falls back to the standard path with one warning on any failure);
- graphs=True: additionally, a call whose exact launch (kernel, every pointer, shape, stride,
  dtype, R) was seen before is captured once into a CUDA graph and replayed from then on. A graph
  reads whatever lives at its pointers, so replaying it for an identical launch is exact. vLLM's
  persistent buffers (token history, per-slot arrays, row mappings) keep their addresses; the
  logits tensor usually does for a given batch size. LRU-bounded; never captures while the current
  stream is already capturing.
On CPU (tests; TRITON_INTERPRET=1 or not) the interpreter runs the same kernel source.

No host-device sync and no per-row Python on any path (after the fast path's one-time self-check):
only shape/dtype checks and one launch. normalised_entropy (adaptive strength) is one more launch
of entropy.py's kernel, which reads the logits once and allocates only its [R] output.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from vllm_ngram_style.contract import CompiledStyle

from . import entropy as ek
from . import steer_kernel as sk
from .fast_launch import LAUNCH_PATHS, KernelLauncher
from .gpu_tables import DEFAULT_LOAD_FACTOR, DEFAULT_PROBE, GpuTables, build_tables

ENTROPY_BLOCK_V = 4096  # logits per step of the entropy kernel
MAX_GUARD = 8  # largest loop-guard n-gram size the kernel checks (request_args.MAX_LOOP_GUARD)
ENTROPY_WARPS = 8


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


class TritonSteering:
    """Applies z[r, t] += row_scale[r] * sum_k strength[r, k] * sum_n D_{variant[r, k], n}(c_n(r), t) in place.

    variants: list of CompiledStyle; a column's variant id is its index here (-1: none).
    """

    backend = "triton"
    # apply_from_history takes the core's per-slot adaptive / loop-guard / penalty state and applies it in the
    # kernel (steering_core.SteeringCore.apply_from_history hands it over instead of running torch ops)
    fuses_history_extras = True

    def __init__(self, variants: list[CompiledStyle], device, *, block: int = 256, num_warps: int = 4,
                 probe: int = DEFAULT_PROBE, load_factor: float = DEFAULT_LOAD_FACTOR, launch: str = "fast",
                 graphs: bool = False, max_graphs: int = 32, max_home_range: int | None = None,
                 entropy_block: int = ENTROPY_BLOCK_V, entropy_warps: int = ENTROPY_WARPS):
        if launch not in LAUNCH_PATHS:
            raise ValueError(f"launch must be one of {LAUNCH_PATHS}, got {launch!r}")
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        if entropy_block < 16 or entropy_block & (entropy_block - 1):
            raise ValueError(f"entropy_block must be a power of two >= 16, got {entropy_block}")
        self.device = torch.device(device)
        self.tables: GpuTables = build_tables(variants, self.device, load_factor=load_factor, probe=probe,
                                              max_home_range=max_home_range)
        self.max_order = self.tables.max_order
        self.num_variants = self.tables.num_variants
        self._blob = self.tables.blob  # [N] int64 on the device
        self._one = torch.ones(1, dtype=torch.float32, device=self.device)  # [1] row scale of every row, stride 0
        tc = self.tables.constexprs()
        self._table_consts = (tc["MAX_ORDER"], tc["CTX_BLOCK"], tc["MAXW"], tc["PROBE"], block)
        self._consts: dict = {}  # (K, history extras) -> every constexpr of a launch, in signature order
        assert sk.CONSTEXPR_NAMES[2:] == ("MAX_ORDER", "CTX_BLOCK", "MAXW", "PROBE", "BLOCK")
        kernels = sk.kernels_for(self.device)
        entropy_kernel = ek.kernel_for(self.device)
        from .interpreted import is_interpreted

        cuda = self._cuda = self.device.type == "cuda" and not is_interpreted(kernels["context"])
        path = launch if cuda else "standard"
        self.launchers = {kind: KernelLauncher(kernels[kind], consts, num_warps, path, f"steering ({kind})")
                          for kind, (_, _, consts) in sk.ENTRY_POINTS.items()}
        self.launchers["entropy"] = KernelLauncher(entropy_kernel, ek.CONSTEXPR_NAMES, entropy_warps, path,
                                                   "entropy", out_arg=3, out_stride_arg=None, poison=float("nan"),
                                                   specialised=ek.SPECIALISED)
        self._entropy_block = entropy_block
        self.graphs = bool(graphs) and cuda  # public: the benchmark toggles it
        self._graphs: OrderedDict = OrderedDict()  # exact launch -> torch.cuda.CUDAGraph
        self._seen: OrderedDict = OrderedDict()  # exact launches seen once (captured on the second sighting)
        self._max_graphs = max_graphs
        self._capture_stream = None

    @property
    def context_len(self) -> int:
        return self.max_order - 1

    @property
    def launch_path(self) -> str:
        """"fast" or "standard" (the steering kernels'; setting it sets every launcher's)."""
        return self.launchers["context"].path

    @launch_path.setter
    def launch_path(self, path: str) -> None:
        if path not in LAUNCH_PATHS:
            raise ValueError(f"launch path must be one of {LAUNCH_PATHS}, got {path!r}")
        for launcher in self.launchers.values():  # a launcher whose fast path failed its check stays standard
            launcher.path = path if self._cuda and not launcher.failure else "standard"

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def table_bytes(self) -> int:
        return self.tables.table_bytes

    @property
    def bytes_per_entry(self) -> float:
        return self.tables.bytes_per_entry

    # -- public ops --------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, variant: torch.Tensor, strength: torch.Tensor, context: torch.Tensor,
              row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V]. variant [R] or [R, K] int (-1: none), strength the same shape,
        float; context [R, >= max_order-1] int, right-aligned (newest last), -1 where the history is
        shorter; row_scale [R] float multiplies every strength of the row (None: 1). Returns logits."""
        r = self._check_logits(logits)
        k, (vr, vc), (sr, sc) = self._check_columns(variant, strength, r, "variant", "strength", "R")
        m = self.max_order - 1
        if context.dim() != 2 or context.shape[0] != r or context.shape[1] < m or (m and context.stride(1) != 1):
            raise ValueError(f"context must be [{r}, >= {m}] with contiguous rows, got {tuple(context.shape)}")
        if r == 0:
            return logits
        scale, scale_stride = self._scale(row_scale, r)
        args = (logits, logits.stride(0), logits.shape[1], self._blob, variant, vr, vc, strength, sr, sc,
                context, context.stride(0), context.shape[1] - m, scale, scale_stride)
        self._launch(r, "context", args, k)
        return logits

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           row_scale: torch.Tensor | None = None, *, slot_adaptive: torch.Tensor | None = None,
                           slot_guard: torch.Tensor | None = None, prompt_len: torch.Tensor | None = None,
                           slot_guard_penalty: torch.Tensor | None = None, guard_window: int = 64) -> torch.Tensor:
        """In place on logits [R, V], reading vLLM model-runner-v2 state on the device.

        row_slot [R] int (row -> slot; out of [0, S): unsteered), row_last_pos [R] int (index in
        all_token_ids[slot] of the newest known token; positions < 0 are missing), all_token_ids
        [S, L] int32/int64 (device memory or a UVA view of pinned host memory), slot_variant [S] or
        [S, K] int (-1: none), slot_strength the same shape, float; row_scale [R] float or None.

        The core's per-slot extras, applied in the same launch (steering_core.py has their meaning):
        slot_adaptive [S] int (1: every strength of the row times its normalised entropy, computed
        from the logits before the edit: one more launch); slot_guard [S] int (loop guard n-gram size,
        0 = off, at most MAX_GUARD) with prompt_len [S] (the guard looks at the last guard_window
        generated tokens); slot_guard_penalty [S] float (guarded tokens end that many nats below their
        unsteered logit) or None."""
        r = self._check_logits(logits)
        if row_slot.shape != (r,) or row_last_pos.shape != (r,):
            raise ValueError(f"row_slot and row_last_pos must be [{r}], got {tuple(row_slot.shape)} / "
                             f"{tuple(row_last_pos.shape)}")
        if all_token_ids.dim() != 2 or all_token_ids.stride(1) != 1:
            raise ValueError(f"all_token_ids must be [S, L] with contiguous rows, got {tuple(all_token_ids.shape)}")
        s = all_token_ids.shape[0]
        k, (vr, vc), (sr, sc) = self._check_columns(slot_variant, slot_strength, s, "slot_variant", "slot_strength",
                                                    "S")
        extras = dict(slot_adaptive=slot_adaptive, slot_guard=slot_guard, prompt_len=prompt_len,
                      slot_guard_penalty=slot_guard_penalty)
        for name, t in extras.items():
            if t is not None and t.shape != (s,):
                raise ValueError(f"{name} must be [S={s}], got {tuple(t.shape)}")
        if slot_guard is not None and prompt_len is None:
            raise ValueError("slot_guard needs prompt_len (where each slot's generated tokens start)")
        if not 2 <= guard_window <= 1024:
            raise ValueError(f"guard_window must be in [2, 1024], got {guard_window}")
        if r == 0:
            return logits
        scale, scale_stride = self._scale(row_scale, r)
        entropy = self.normalised_entropy(logits) if slot_adaptive is not None else None  # [R], before the edit
        one = self._one  # the placeholder of every unused pointer
        args = (logits, logits.stride(0), logits.shape[1], self._blob, row_slot, row_last_pos,
                slot_variant, vr, vc, slot_strength, sr, sc,
                all_token_ids, all_token_ids.stride(0), s, all_token_ids.shape[1], scale, scale_stride,
                one if slot_adaptive is None else slot_adaptive, one if entropy is None else entropy,
                one if slot_guard is None else slot_guard, one if slot_guard is None else prompt_len,
                one if slot_guard is None or slot_guard_penalty is None else slot_guard_penalty)
        flags = (slot_adaptive is not None, slot_guard is not None, slot_guard is not None and slot_guard_penalty
                 is not None, guard_window, _next_pow2(guard_window), MAX_GUARD)
        self._launch(r, "history", args, k, flags)
        return logits

    def normalised_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """[R, V] logits -> [R] float32 H(softmax(z_r)) / log V (adaptive.py's formula), one read of the
        logits and no [R, V] temporary (entropy.py)."""
        r = self._check_logits(logits)
        out = torch.empty(r, dtype=torch.float32, device=logits.device)  # [R]
        if r:
            v = logits.shape[1]
            self.launchers["entropy"](r, (logits, logits.stride(0), v, out), (ek.block_for(v, self._entropy_block),))
        return out

    # -- checks --------------------------------------------------------------------------------------
    @staticmethod
    def _check_logits(logits: torch.Tensor) -> int:
        if logits.dim() != 2 or (logits.shape[1] > 1 and logits.stride(1) != 1):
            raise ValueError(f"logits must be [R, V] with contiguous rows, got {tuple(logits.shape)}")
        return logits.shape[0]

    @staticmethod
    def _check_columns(variant, strength, n: int, vname: str, sname: str, dim: str):
        """K and the (row, column) strides of variant and strength, [n] or [n, K] (K <= MAX_COLUMNS)."""
        if variant.shape != strength.shape or variant.dim() not in (1, 2) or variant.shape[0] != n \
                or (variant.dim() == 2 and not 1 <= variant.shape[1] <= sk.MAX_COLUMNS):
            raise ValueError(f"{vname} and {sname} must both be [{dim}={n}] or [{dim}={n}, K <= {sk.MAX_COLUMNS}], "
                             f"got {tuple(variant.shape)} / {tuple(strength.shape)}")
        if variant.dim() == 1:
            return 1, (variant.stride(0), 0), (strength.stride(0), 0)
        return variant.shape[1], variant.stride(), strength.stride()

    def _scale(self, row_scale, r: int):
        if row_scale is None:
            return self._one, 0
        if row_scale.shape != (r,):
            raise ValueError(f"row_scale must be [{r}], got {tuple(row_scale.shape)}")
        return row_scale, row_scale.stride(0)

    # -- launching -----------------------------------------------------------------------------------
    def _launch(self, r: int, kind: str, args: tuple, k: int, extra_consts: tuple = ()) -> None:
        """One launch of the ``kind`` ("context" / "history") kernel over r rows with K = k columns
        (extra_consts: the history kernel's ADAPTIVE ... MAX_GUARD)."""
        consts = self._consts.get((k, extra_consts))
        if consts is None:
            consts = self._consts[(k, extra_consts)] = (k, _next_pow2(k)) + self._table_consts + extra_consts
        if self.graphs and self._cuda:
            gkey = self._graph_key(r, kind, args, consts)
            g = self._graphs.get(gkey)
            if g is not None:
                self._graphs.move_to_end(gkey)
                g.replay()
                return
            if gkey in self._seen and not torch.cuda.is_current_stream_capturing():
                self._seen.pop(gkey)
                self._capture(gkey, r, kind, args, consts).replay()
                return
            self._seen[gkey] = None
            if len(self._seen) > 4 * self._max_graphs:
                self._seen.popitem(last=False)
        self.launchers[kind](r, args, consts)

    @staticmethod
    def _graph_key(r: int, kind: str, args: tuple, consts: tuple) -> tuple:
        return (r, kind) + consts + tuple(
            (a.data_ptr(), a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args)

    def _capture(self, gkey: tuple, r: int, kind: str, args: tuple, consts: tuple):
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        g = torch.cuda.CUDAGraph()
        # Capturing records the launch without running it; the caller replays it right after.
        with torch.cuda.stream(self._capture_stream):
            g.capture_begin(capture_error_mode="thread_local")
            try:
                self.launchers[kind](r, args, consts)
            finally:
                g.capture_end()
        self._graphs[gkey] = g
        if len(self._graphs) > self._max_graphs:
            self._graphs.popitem(last=False)
        return g
