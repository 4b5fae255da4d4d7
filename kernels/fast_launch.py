"""Launching one Triton kernel cheaply: the standard path, or a guarded fast path.

- "standard": Triton's ``kernel[grid](...)``, which binds and specialises every argument on every
  call (about 30 us of host time for a kernel with ~20 arguments, gpu-notes.md).
- "fast": the first call of each argument signature goes through the standard path and keeps the
  compiled kernel it returns; later calls hand that kernel's launcher the same positional
  arguments directly: ``compiled.run(gx, gy, gz, stream, function, packed_metadata,
  launch_metadata, enter_hook, exit_hook, *every_argument_incl_constexprs)``. Kernels are jitted with
  do_not_specialize on every integer and do_not_specialize_on_alignment on every pointer, so one
  compiled kernel is valid for every value with the same dtypes and integer widths: those (and the
  constexprs) are the cache key.

That calling convention is Triton's private API. It was read in the source of Triton 3.6.0,
3.8.0 and 3.9.0 (python/triton/runtime/jit.py ``JITFunction.run`` calls ``kernel.run`` exactly so;
``CompiledKernel.packed_metadata`` and ``.function`` exist in all three; the CUDA launcher skips the
constexpr arguments itself) and exercised on CPU with 3.9.0 only (no GPU in that session). Because a
future release may change it, the fast path proves itself at first use: on its first call with a
new signature it runs the standard launch and the fast launch on private copies of the first rows'
output and requires bit-identical results (one host sync, once per signature); any exception or
difference switches this launcher to the standard path for good, with one warning. An exception in
a later fast launch does the same (the launcher raises before the kernel is queued, so nothing was
written and the standard launch that follows applies the step once). No self-check runs while the
stream is being captured into a CUDA graph (a sync there is illegal): such calls take the standard path.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

LAUNCH_PATHS = ("standard", "fast")
PROBE_ROWS = 8  # rows of the real call that the self-check launches twice

try:
    from triton import knobs as _knobs
except ImportError:  # older Triton: no knobs module, so no fast path
    _knobs = None


def _idle(hook) -> bool:
    # Triton 3.6-3.9 keep a HookChain (a list of callables, empty when nobody listens) where older
    # releases kept None; a HookChain object is never None, so testing for None alone would never
    # let the fast path run.
    return hook is None or (type(getattr(hook, "calls", None)) is list and not hook.calls)


_RUNTIME = getattr(_knobs, "runtime", None)


def hooks_off() -> bool:
    """No launch hooks installed: profilers (e.g. proton) install some, and need Triton's full launch path."""
    rt = _RUNTIME
    return rt is not None and _idle(getattr(rt, "launch_enter_hook", None)) and _idle(getattr(rt, "launch_exit_hook", None))


def _is_wide(x: int) -> bool:
    """Whether Triton types this integer argument as 64-bit (it picks i32 when the value fits)."""
    return not -(1 << 31) <= x < (1 << 31)


def signature_key(args: tuple, consts: tuple, specialised: frozenset = frozenset()) -> tuple:
    """What selects the compiled kernel: constexprs, tensor dtypes, integer widths, and for the arguments
    Triton may specialise (indices in ``specialised``) what it specialises on: a pointer's 16-byte
    alignment, an integer's divisibility by 16 and whether it equals 1."""
    return split_args(args, consts, specialised)[0]


def split_args(args: tuple, consts: tuple, specialised: frozenset = frozenset()) -> tuple[tuple, list]:
    """(signature_key, the launch arguments as integers) in one pass: this runs on every fast launch."""
    key, raw = list(consts), []
    for a in args:
        if type(a) is int:  # the launchers pass ints and tensors only
            key.append(not -2147483648 <= a < 2147483648)
            raw.append(a)
        else:
            key.append(a.dtype)
            raw.append(a.data_ptr())
    for i in sorted(specialised):
        a = args[i]
        key.append((raw[i] % 16 == 0, a == 1) if type(a) is int else raw[i] % 16 == 0)
    return tuple(key), raw


class KernelLauncher:
    """Launches ``kernel`` with a 1-D grid; ``out_arg`` is the index of the tensor the kernel writes (its
    first dimension runs over the grid), ``out_stride_arg`` that of its row stride when it is passed
    (None: a 1-D output); ``poison`` fills the self-check's output copies first (None: keep the input,
    for kernels that edit in place); ``specialised``: indices of the arguments jitted WITHOUT
    do_not_specialize / do_not_specialize_on_alignment (their alignment joins the cache key)."""

    def __init__(self, kernel, constexpr_names: tuple, num_warps: int, path: str, name: str,
                 out_arg: int = 0, out_stride_arg: int | None = 1, poison: float | None = None,
                 specialised: tuple = ()):
        if path not in LAUNCH_PATHS:
            raise ValueError(f"launch path must be one of {LAUNCH_PATHS}, got {path!r}")
        self.kernel = kernel
        self.constexpr_names = tuple(constexpr_names)
        self.num_warps = num_warps
        self.path = path
        self.name = name
        self.out_arg, self.out_stride_arg, self.poison = out_arg, out_stride_arg, poison
        self.specialised = frozenset(specialised)
        self.compiled: dict = {}  # signature key -> Triton CompiledKernel, proven
        self.fast_launches = 0  # calls that went through the fast path (for tests and benchmarks)
        self.failure: str | None = None  # why the fast path was given up, if it was
        self._standard_only: set = set()  # signature keys the self-check cannot cover (stay standard)
        self._get_stream = self._get_device = None

    # -- paths ---------------------------------------------------------------------------------------
    def __call__(self, grid: int, args: tuple, consts: tuple) -> None:
        if self.path == "fast" and hooks_off():
            key, raw = split_args(args, consts, self.specialised)
            compiled = self.compiled.get(key)
            if key in self._standard_only:
                pass
            elif compiled is not None:
                try:
                    self.run_compiled(compiled, grid, args, consts, raw)
                    self.fast_launches += 1
                    return
                except Exception as exc:  # noqa: BLE001 - any failure: the standard path is always right
                    self.give_up(f"fast launch raised {type(exc).__name__}: {exc}")
            else:
                compiled = self.standard(grid, args, consts)
                if compiled is not None:
                    self._prove(key, compiled, grid, args, consts)
                return
        self.standard(grid, args, consts)

    def standard(self, grid: int, args: tuple, consts: tuple):
        """Triton's own launch; returns the CompiledKernel (None under the interpreter)."""
        return self.kernel[(grid,)](*args, **dict(zip(self.constexpr_names, consts)), num_warps=self.num_warps)

    def run_compiled(self, compiled, grid: int, args: tuple, consts: tuple, raw: list | None = None) -> None:
        """The fast launch: Triton's compiled-kernel launcher called directly (see the module docstring).
        raw: the arguments as integers (tensors as data pointers), when the caller has them."""
        if raw is None:
            raw = split_args(args, ())[1]
        compiled.run(grid, 1, 1, self.stream(), compiled.function, compiled.packed_metadata, None, None, None,
                     *raw, *consts)

    def stream(self) -> int:
        """The current device's current CUDA stream handle, looked up on every call as Triton's own launch does."""
        if self._get_stream is None:
            from triton.runtime import driver

            self._get_stream = driver.active.get_current_stream
            self._get_device = driver.active.get_current_device
        return self._get_stream(self._get_device())

    def give_up(self, why: str) -> None:
        self.failure = why
        self.path = "standard"
        self.compiled.clear()
        logger.warning("vllm-ngram-style: the fast launch path of the %s kernel failed its check (%s); using "
                       "Triton's standard launch from now on (correct, ~30 us more host time per step)", self.name, why)

    # -- the self-check -------------------------------------------------------------------------------
    def _prove(self, key: tuple, compiled, grid: int, args: tuple, consts: tuple) -> None:
        """Launch the first rows twice, standard and fast, into private copies of the output; keep
        ``compiled`` for the fast path only when the two agree bit for bit."""
        if _capturing():
            return  # no sync inside a graph capture: prove it on a later eager call
        rows = min(grid, PROBE_ROWS)
        out = args[self.out_arg]
        if self.out_stride_arg is not None and _is_wide(out[0].numel()) != _is_wide(args[self.out_stride_arg]):
            self._standard_only.add(key)  # the copy would compile another signature: keep this one standard
            return
        copies = []
        for _ in range(2):
            c = out[:rows].clone()  # [rows, ...]
            if self.poison is not None:
                c.fill_(self.poison)
            a = list(args)
            a[self.out_arg] = c
            if self.out_stride_arg is not None:
                a[self.out_stride_arg] = c.stride(0)
            copies.append((c, tuple(a)))
        try:
            self.standard(rows, copies[0][1], consts)
            self.run_compiled(compiled, rows, copies[1][1], consts)
            same = torch.equal(_bits(copies[0][0]), _bits(copies[1][0]))  # syncs, once per signature
        except Exception as exc:  # noqa: BLE001
            self.give_up(f"self-check raised {type(exc).__name__}: {exc}")
            return
        if not same:
            self.give_up("self-check: the fast launch's output differs from the standard launch's")
            return
        self.compiled[key] = compiled


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaNs compare equal to themselves."""
    return t.contiguous().view(torch.uint8)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
