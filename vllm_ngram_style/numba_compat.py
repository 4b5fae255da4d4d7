"""Importing numba next to vLLM 0.32, safely. Every module that imports numba imports this first.

vLLM 0.32's CPU worker start (triton_utils.dispatcher._rebind_kernels) calls
``vars(x).get("kernel")`` on every module global that has a ``__dict__``. llvmlite's
``binding.ffi.lib`` (loaded with numba) forwards attribute lookups to the C library, so its
``__dict__`` is a wrapped C symbol without ``.get``, and every vLLM worker started in a process that
has imported numba (a second in-process engine: the evaluation, the benchmarks, the tests) raised
AttributeError. An empty dict under that one name makes ``vars(lib)`` a dict; llvmlite never calls a
C function of that name. tests/test_cpu_kernel.py runs vLLM's own scan to keep this honest.
"""
from __future__ import annotations


def keep_vllm_module_scan_working() -> None:
    try:
        from llvmlite.binding import ffi

        table = ffi.lib._fntab  # the wrapper's cache of looked-up symbols
        if not isinstance(table.get("__dict__"), dict):
            table["__dict__"] = {}
    except (ImportError, AttributeError):  # another llvmlite layout: nothing to keep safe
        pass


keep_vllm_module_scan_working()
