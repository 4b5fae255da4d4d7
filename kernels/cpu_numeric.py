"""Numeric plumbing of the CPU op's compiled loops (numba): the jit decorator, a prefetch hint, LLVM
bit casts, and element access by logits dtype, so that one loop body serves float32, float64,
bfloat16 and float16.

numpy and numba have no bfloat16 and numba no float16: those logits arrive as their raw bits (an
int16 / uint16 view) and are computed in float32, rounded back to nearest-even (bfloat16 by integer
arithmetic, float16 by LLVM's fptrunc, both as torch rounds).
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
from llvmlite import ir

from vllm_ngram_style import numba_compat  # noqa: F401  (keeps vLLM's module scan working)
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload




def jit(**opts):
    """njit with an on-disk cache where one can be written (the source tree, else numba's user-wide
    cache dir); without it every process compiles afresh (a few seconds, once)."""
    opts = dict(nogil=True, error_model="numpy", **opts)

    def wrap(fn):
        try:
            disp = njit(cache=True, **opts)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**opts)(fn)
        return _tie_cache_to_sources(disp, opts)

    return wrap


def _tie_cache_to_sources(disp, opts):
    """numba judges a cached function fresh by its own file's mtime and size alone, yet the machine code
    has this module's helpers and gpu_tables' constants compiled in: after an update that touched only
    those (a git pull, an editable install), the stale code would run. So the cache's freshness stamp
    becomes a digest of every source in this package. The stamp lives in a private numba attribute;
    where it is gone, caching is dropped rather than risked."""
    cache_file = getattr(getattr(disp, "_cache", None), "_cache_file", None)
    if cache_file is None or not hasattr(cache_file, "_source_stamp"):
        return njit(**opts)(disp.py_func)
    cache_file._source_stamp = sources_digest()
    return disp


@functools.lru_cache(maxsize=None)
def sources_digest() -> str:
    """sha256 over the package's .py sources (name and bytes, in name order): the compiled loops'
    freshness stamp."""
    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(f for f in os.listdir(here) if f.endswith(".py")):
        with open(os.path.join(here, name), "rb") as fh:
            h.update(name.encode() + b"\0" + fh.read() + b"\0")
    return h.hexdigest()


# ---- software prefetch ----------------------------------------------------------------------------

@intrinsic
def prefetch_line(typingctx, arr, i):
    """A hint to fetch the cache line of arr[i] into L2 (x86 PREFETCHT1; a no-op where the target has
    none). It never faults, so i past the array's end is harmless, and changes no result.
    A read hint, though the line will be written: on the 2-core Intel Xeon VM of 2026-12-02 it made
    the op 0.91x the time of PREFETCHW into L1 (B=256..1024, logits out of cache; paired runs, see
    RESULTS.md's sixth cpu_op_bench run). A line no other core holds arrives exclusive, so the store
    that follows needs no second request. L1 versus L2 made no measurable difference on the AMD EPYC of the
    earlier runs and little on the Xeon (0.91 vs 0.93)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                            "llvm.prefetch.p0")
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr] + [ir.Constant(ir.IntType(32), x) for x in (0, 2, 1)])  # read, L2 (locality 2), data
        return context.get_dummy_value()
    return types.void(arr, i), codegen


# ---- bit casts (LLVM instructions: no libm, vectorisable) ----------------------------------------

@intrinsic
def f32_from_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _f16_to_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_f16(typingctx, x):
    def codegen(context, builder, sig, args):  # fptrunc rounds to nearest-even, as torch's .half() does
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@njit(inline="always")
def _bf16_to_f32(x):
    return f32_from_bits(np.int32((np.int64(x) & 0xFFFF) << 16))


@njit(inline="always")
def _f32_to_bf16(y):
    u = np.int64(_f32_bits(y)) & 0xFFFFFFFF
    if y != y:
        return np.int16(0x7FC0)  # torch's canonical bfloat16 NaN
    return np.int16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)  # round to nearest-even


# ---- element access by logits dtype ----------------------------------------------------------------

def get_f32(a, i):
    """a[i] as float32 (the precision of adaptive.py's formula, which computes in float32)."""


def add_scaled(a, i, s, d):
    """a[i] += s * d (d a float32 delta) in a's precision (float32 for the 16-bit formats, then rounded
    to them): the product rounded once to float32 (float64 logits: exact), then one rounded add."""


@overload(get_f32, inline="always")
def _get_impl(a, i):
    dt = a.dtype
    if dt == types.float32:
        return lambda a, i: a[i]
    if dt == types.float64:
        return lambda a, i: np.float32(a[i])
    if dt == types.int16:
        return lambda a, i: _bf16_to_f32(a[i])
    if dt == types.uint16:
        return lambda a, i: _f16_to_f32(a[i])
    return None


@overload(add_scaled, inline="always")
def _add_impl(a, i, s, d):
    dt = a.dtype
    if s == types.float32:  # d is float32: the float32 product is the correctly rounded exact product
        def product(s, d):
            return s * d
    else:  # a float64 strength: the product in float64, rounded to the logits once
        def product(s, d):
            return np.float64(s) * np.float64(d)
    product = njit(inline="always")(product)
    if dt == types.float32:
        def add32(a, i, s, d):
            a[i] = a[i] + np.float32(product(s, d))
        return add32
    if dt == types.float64:
        def add64(a, i, s, d):
            a[i] = a[i] + np.float64(s) * np.float64(d)
        return add64
    if dt == types.int16:
        def add_bf16(a, i, s, d):
            a[i] = _f32_to_bf16(_bf16_to_f32(a[i]) + np.float32(product(s, d)))
        return add_bf16
    if dt == types.uint16:
        def add_f16(a, i, s, d):
            a[i] = _f32_to_f16(_f16_to_f32(a[i]) + np.float32(product(s, d)))
        return add_f16
    return None
