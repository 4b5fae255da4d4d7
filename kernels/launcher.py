"""TritonSteering: builds the GPU tables once and launches the steering kernel, one launch per step.

Launch paths (host cost is what matters: the kernel itself takes microseconds, see gpu-notes.md):
- "standard": Triton's ``kernel[grid](...)``: binds and specialises every argument on every call.
- "fast" (default on CUDA): the first call of each argument signature goes through the standard
  path and keeps the compiled kernel it returns; later calls hand the compiled kernel's launcher the
  same positional arguments (integer pointers, the same constexprs), skipping the binder. The
  kernel is jitted with do_not_specialize on every integer and do_not_specialize_on_alignment on
  every pointer, so one compiled kernel is valid for every value with the same dtypes and integer
  widths: those are the cache key.
- graphs=True: additionally, a call whose exact launch (every pointer, shape, stride, dtype, R)
  was seen before is captured once into a CUDA graph and replayed from then on. A graph reads
  whatever lives at its pointers, so replaying it for an identical launch is exact. vLLM's
  persistent buffers (token history, per-slot arrays, row mappings) keep their addresses; the
  logits tensor usually does for a given batch size. LRU-bounded; never captures while the current
  stream is already capturing.
On CPU (tests; TRITON_INTERPRET=1 or not) the interpreter runs the same kernel source.

No host-device sync and no per-row Python on any path: only shape/dtype checks and one launch.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from vllm_ngram_style.adaptive import adaptive_scale
from vllm_ngram_style.contract import CompiledStyle

from . import steer_kernel as sk
from .gpu_tables import DEFAULT_LOAD_FACTOR, DEFAULT_PROBE, GpuTables, build_tables

LAUNCH_PATHS = ("standard", "fast")


try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no knobs module, so no fast path
    _knobs = None


def _hooks_off() -> bool:
    """Profilers (e.g. proton) install launch hooks that need Triton's full launch path."""
    rt = getattr(_knobs, "runtime", None)
    return rt is not None and rt.launch_enter_hook is None and rt.launch_exit_hook is None


def _int_width(x: int) -> bool:
    """Whether Triton types this integer argument as 64-bit (it picks i32 when the value fits)."""
    return not -(1 << 31) <= x < (1 << 31)


class TritonSteering:
    """Applies z[r, t] += strength[r] * row_scale[r] * sum_n D_n(c_n(r), t) in place, for many variants at once.

    variants: list of CompiledStyle; a row's variant id is its index here (-1: unsteered).
    """

    backend = "triton"

    def __init__(self, variants: list[CompiledStyle], device, *, block: int = 256, num_warps: int = 4,
                 probe: int = DEFAULT_PROBE, load_factor: float = DEFAULT_LOAD_FACTOR, launch: str = "fast",
                 graphs: bool = False, max_graphs: int = 32, max_home_range: int | None = None):
        if launch not in LAUNCH_PATHS:
            raise ValueError(f"launch must be one of {LAUNCH_PATHS}, got {launch!r}")
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        self.device = torch.device(device)
        self.tables: GpuTables = build_tables(variants, self.device, load_factor=load_factor, probe=probe,
                                              max_home_range=max_home_range)
        self.max_order = self.tables.max_order
        self.num_variants = self.tables.num_variants
        self._blob = self.tables.blob  # [N] int64 on the device
        self._consts = dict(self.tables.constexprs(), BLOCK=block)  # without FROM_HISTORY / HAS_SCALE
        # The fast path passes constexprs positionally, in the kernel's signature order.
        assert ("FROM_HISTORY", "HAS_SCALE") + tuple(self._consts) == sk.CONSTEXPR_NAMES
        self._num_warps = num_warps
        self._kernel = sk.kernel_for(self.device)
        cuda = self._cuda = self.device.type == "cuda" and not sk.is_interpreted(self._kernel)
        self.launch_path = launch if cuda else "standard"
        self._compiled: dict = {}  # fast-path key -> Triton CompiledKernel
        self.graphs = bool(graphs) and cuda  # public: the benchmark toggles it
        self._graphs: OrderedDict = OrderedDict()  # exact launch -> torch.cuda.CUDAGraph
        self._seen: OrderedDict = OrderedDict()  # exact launches seen once (captured on the second sighting)
        self._max_graphs = max_graphs
        self._capture_stream = None
        if cuda:
            from triton.runtime import driver

            self._get_stream = driver.active.get_current_stream
            self._device_index = self.device.index if self.device.index is not None else torch.cuda.current_device()

    @property
    def context_len(self) -> int:
        return self.max_order - 1

    @staticmethod
    def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
        """[R, V] logits -> [R] float32 H(softmax(z_r)) / log V (adaptive.py's formula)."""
        return adaptive_scale(logits)

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
        """In place on logits [R, V]. variant [R] int (-1: unsteered), strength [R] float,
        context [R, >= max_order-1] int, right-aligned (newest last), -1 where the history is shorter;
        row_scale [R] float multiplies strength (None: 1). Returns logits."""
        r = self._check_logits(logits)
        m = self.max_order - 1
        if variant.shape != (r,) or strength.shape != (r,):
            raise ValueError(f"variant and strength must be [{r}], got {tuple(variant.shape)} / {tuple(strength.shape)}")
        if context.dim() != 2 or context.shape[0] != r or context.shape[1] < m or (m and context.stride(1) != 1):
            raise ValueError(f"context must be [{r}, >= {m}] with contiguous rows, got {tuple(context.shape)}")
        if r == 0:
            return logits
        self._check_scale(row_scale, r)
        scale = row_scale if row_scale is not None else strength
        args = (logits, logits.stride(0), logits.shape[1], self._blob, variant, strength, self._blob, context,
                context.stride(0), context.shape[1] - m, self._blob, 0, 0, scale)
        self._launch(r, args, False, row_scale is not None)
        return logits

    def apply_from_history(self, logits: torch.Tensor, row_slot: torch.Tensor, row_last_pos: torch.Tensor,
                           all_token_ids: torch.Tensor, slot_variant: torch.Tensor, slot_strength: torch.Tensor,
                           row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place on logits [R, V], reading vLLM model-runner-v2 state on the device.

        row_slot [R] int (row -> slot; out of [0, S): unsteered), row_last_pos [R] int (index in
        all_token_ids[slot] of the newest known token; positions < 0 are missing), all_token_ids
        [S, L] int32/int64, slot_variant [S] int (-1: unsteered), slot_strength [S] float,
        row_scale [R] float or None. Returns logits."""
        r = self._check_logits(logits)
        if row_slot.shape != (r,) or row_last_pos.shape != (r,):
            raise ValueError(f"row_slot and row_last_pos must be [{r}], got {tuple(row_slot.shape)} / "
                             f"{tuple(row_last_pos.shape)}")
        if all_token_ids.dim() != 2 or all_token_ids.stride(1) != 1:
            raise ValueError(f"all_token_ids must be [S, L] with contiguous rows, got {tuple(all_token_ids.shape)}")
        s = all_token_ids.shape[0]
        if slot_variant.shape != (s,) or slot_strength.shape != (s,):
            raise ValueError(f"slot_variant and slot_strength must be [{s}], got {tuple(slot_variant.shape)} / "
                             f"{tuple(slot_strength.shape)}")
        if r == 0:
            return logits
        self._check_scale(row_scale, r)
        scale = row_scale if row_scale is not None else slot_strength
        args = (logits, logits.stride(0), logits.shape[1], self._blob, row_slot, slot_strength, slot_variant,
                all_token_ids, all_token_ids.stride(0), 0, row_last_pos, s, all_token_ids.shape[1], scale)
        self._launch(r, args, True, row_scale is not None)
        return logits

    # -- checks --------------------------------------------------------------------------------------
    @staticmethod
    def _check_logits(logits: torch.Tensor) -> int:
        if logits.dim() != 2 or (logits.shape[1] > 1 and logits.stride(1) != 1):
            raise ValueError(f"logits must be [R, V] with contiguous rows, got {tuple(logits.shape)}")
        return logits.shape[0]

    @staticmethod
    def _check_scale(row_scale, r: int) -> None:
        if row_scale is not None and row_scale.shape != (r,):
            raise ValueError(f"row_scale must be [{r}], got {tuple(row_scale.shape)}")

    # -- launching -----------------------------------------------------------------------------------
    def _launch(self, r: int, args: tuple, from_history: bool, has_scale: bool) -> None:
        if self.graphs and self._cuda:
            gkey = self._graph_key(r, args, from_history, has_scale)
            g = self._graphs.get(gkey)
            if g is not None:
                self._graphs.move_to_end(gkey)
                g.replay()
                return
            if gkey in self._seen and not torch.cuda.is_current_stream_capturing():
                self._seen.pop(gkey)
                self._capture(gkey, r, args, from_history, has_scale).replay()
                return
            self._seen[gkey] = None
            if len(self._seen) > 4 * self._max_graphs:
                self._seen.popitem(last=False)
        self._launch_eager(r, args, from_history, has_scale)

    def _launch_eager(self, r: int, args: tuple, from_history: bool, has_scale: bool) -> None:
        if self.launch_path == "fast":
            key = (from_history, has_scale) + tuple(a.dtype if isinstance(a, torch.Tensor) else _int_width(a)
                                                    for a in args)
            compiled = self._compiled.get(key)
            if compiled is not None and _hooks_off():
                ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
                compiled.run(r, 1, 1, self._get_stream(self._device_index), compiled.function,
                             compiled.packed_metadata, None, None, None, *ptrs, from_history, has_scale,
                             *self._consts.values())
                return
            compiled = self._launch_standard(r, args, from_history, has_scale)
            if compiled is not None and hasattr(compiled, "packed_metadata"):
                self._compiled[key] = compiled
            return
        self._launch_standard(r, args, from_history, has_scale)

    def _launch_standard(self, r: int, args: tuple, from_history: bool, has_scale: bool):
        return self._kernel[(r,)](*args, FROM_HISTORY=from_history, HAS_SCALE=has_scale, **self._consts,
                                  num_warps=self._num_warps)

    @staticmethod
    def _graph_key(r: int, args: tuple, from_history: bool, has_scale: bool) -> tuple:
        return (r, from_history, has_scale) + tuple(
            (a.data_ptr(), a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args)

    def _capture(self, gkey: tuple, r: int, args: tuple, from_history: bool, has_scale: bool):
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        g = torch.cuda.CUDAGraph()
        # Capturing records the launch without running it; the caller replays it right after.
        with torch.cuda.stream(self._capture_stream):
            g.capture_begin(capture_error_mode="thread_local")
            try:
                self._launch_eager(r, args, from_history, has_scale)
            finally:
                g.capture_end()
        self._graphs[gkey] = g
        if len(self._graphs) > self._max_graphs:
            self._graphs.popitem(last=False)
        return g
