"""Interpreted copies of this package's Triton kernel modules, for CPU tensors, whatever the import order.

Triton decides at decoration time whether ``@triton.jit`` returns a compiled-kernel object or the
interpreter's function (TRITON_INTERPRET). A kernel module imported without the variable (e.g.
after vLLM imported triton) would hand CPU tensors a compiled kernel, which cannot run there. A
jitted helper called from an interpreted kernel must itself be interpreted, and the interpreter
resolves names in the kernel module's globals, so wrapping one function is not enough: this loads
a second copy of the whole module with the interpreter switched on, so every kernel and helper in
that copy is interpreted. Kernels written for this must reduce through ``tl.reduce`` with Triton's
own combine functions (the interpreter recognises those by identity) rather than ``tl.sum`` & co.,
which are compiled-only functions when triton.language was imported without the interpreter.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading

_lock = threading.Lock()
_copies: dict = {}


def interpreted_copy(module):
    """The interpreted twin of kernel module ``module`` (loaded once, cached)."""
    with _lock:
        twin = _copies.get(module.__name__)
        if twin is not None:
            return twin
        from triton import knobs

        name = module.__name__ + "__interpreted"
        spec = importlib.util.spec_from_file_location(name, module.__file__)
        twin = importlib.util.module_from_spec(spec)
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            if not knobs.runtime.interpret:  # someone set the knob explicitly: the variable is ignored
                raise RuntimeError("triton.knobs.runtime.interpret is forced off: cannot interpret CPU kernels")
            sys.modules[name] = twin
            spec.loader.exec_module(twin)
        finally:
            if before is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = before
        _copies[module.__name__] = twin
        return twin


def is_interpreted(kernel) -> bool:
    """Whether a jitted object is the interpreter's (runs on CPU tensors)."""
    import triton

    return not isinstance(kernel, triton.runtime.jit.JITFunction)
