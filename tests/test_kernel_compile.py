"""The Triton kernels compile ahead of time for an H100/H200 (sm_90) with the installed Triton, on CPU.

The interpreter (tests/test_kernel.py) runs the kernels' Python semantics; it accepts programs the
compiler rejects (loop-carried types, layouts, scalar/vector mixes). This compiles every entry
point in the configurations the plugin launches (context / history source, 1 and 4 blend columns,
orders 1, 3 and 6 with two-word keys, the history kernel's adaptive / loop-guard / penalty extras; the
entropy kernel) down to a cubin with Triton's bundled ptxas, so such errors show up without a GPU.
Nothing is executed. Checked so (2026-12): Triton 3.6.0, 3.8.0 and 3.9.0, every configuration.

Also a script, for checking another Triton release in a scratch venv holding only that triton:

    /path/to/venv/bin/python tests/test_kernel_compile.py     # prints one line per configuration
"""
import importlib.util
import os
import sys

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")


def _load(name):
    """kernels/<name>.py as a top-level module: needs triton only (no torch, no package)."""
    spec = importlib.util.spec_from_file_location(f"_aot_{name}", os.path.join(KERNELS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _types(names, logits="*fp32", tokens="*i32", ids="*i64"):
    out = {}
    for a in names:
        if a == "logits_ptr":
            out[a] = logits
        elif a in ("tok_ptr", "ctx_ptr"):
            out[a] = tokens
        elif a in ("str_ptr", "sstr_ptr", "scale_ptr", "out_ptr", "ent_ptr", "pen_ptr"):
            out[a] = "*fp32"
        elif a in ("adapt_ptr", "guard_ptr", "start_ptr"):
            out[a] = "*i32"
        elif a.endswith("_ptr"):
            out[a] = ids
        else:
            out[a] = "i32"
    return out


def configurations():
    """(label, module name, entry point, signature, constexprs, num_warps, aligned arg indices)."""
    sk = _load("steer_kernel")
    cases = []
    extras_off = dict(ADAPTIVE=False, GUARD=False, PENALTY=False, WINDOW=64, WB=64, MAX_GUARD=8)
    extras_on = dict(extras_off, ADAPTIVE=True, GUARD=True, PENALTY=True)
    for kind, names in (("context", sk.CONTEXT_ARGS), ("history", sk.HISTORY_ARGS)):
        for k, kb, order, ctx_block, maxw in ((1, 1, 3, 2, 1), (4, 4, 3, 2, 1), (3, 4, 6, 8, 2), (1, 1, 1, 1, 1)):
            consts = dict(K=k, KB=kb, MAX_ORDER=order, CTX_BLOCK=ctx_block, MAXW=maxw, PROBE=16, BLOCK=256)
            for extras in ([extras_off, extras_on] if kind == "history" and k == 1 else
                           [extras_off] if kind == "history" else [{}]):
                on = " + adaptive, guard, penalty" if extras.get("GUARD") else ""
                cases.append((f"steer_{kind} K={k} orders={order} words={maxw}{on}", "steer_kernel", f"steer_{kind}",
                              _types(names), dict(consts, **extras), 4, ()))
    cases.append(("steer_history bf16 logits, int64 history + adaptive, guard", "steer_kernel", "steer_history",
                  _types(sk.HISTORY_ARGS, logits="*bf16", tokens="*i64"),
                  dict(K=2, KB=2, MAX_ORDER=3, CTX_BLOCK=2, MAXW=1, PROBE=16, BLOCK=256, **dict(extras_on, PENALTY=False)),
                  4, ()))
    ek = _load("entropy")
    for dtype in ("*fp32", "*bf16"):
        cases.append((f"entropy_rows {dtype[1:]}", "entropy", "entropy_rows", _types(ek.ARGS, logits=dtype),
                      dict(BLOCK_V=4096), 8, ek.SPECIALISED))
    return cases


def compile_one(module, entry, signature, constexprs, num_warps, aligned=(), arch=90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(_load(module), entry)
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    # what Triton infers at launch for 16-byte-aligned pointers and multiples of 16
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


# The pytest run compiles the configurations a GPU launches by default (a few seconds); the script, all.
QUICK = ("steer_context K=1 orders=3 words=1", "steer_history K=1 orders=3 words=1 + adaptive, guard, penalty",
         "steer_history K=4 orders=3 words=1", "entropy_rows fp32")


def test_kernels_compile_for_sm90():
    """In a fresh process: where triton was first imported under TRITON_INTERPRET=1 (other test modules set
    it), triton.language's own helpers are interpreter objects that a compiled kernel cannot reference."""
    import subprocess

    import pytest

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__, "--quick"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("  OK   ") == len(QUICK), out.stdout


if __name__ == "__main__":
    import time

    import triton

    print(f"triton {triton.__version__}: compiling for sm_90")
    bad = 0
    for label, module, entry, sig, consts, warps, aligned in configurations():
        if "--quick" in sys.argv and label not in QUICK:
            continue
        t0 = time.perf_counter()
        try:
            k = compile_one(module, entry, sig, consts, warps, aligned)
            assert k.asm.get("cubin") and k.metadata.num_warps == warps
            print(f"  OK   {label}: {len(k.asm['cubin'])} B cubin, {k.metadata.shared} B shared "
                  f"({time.perf_counter() - t0:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - report every configuration
            bad += 1
            print(f"  FAIL {label}: {type(exc).__name__}: {str(exc)[:2000]}")
    sys.exit(1 if bad else 0)
