"""The CPU op's on-disk numba cache must not outlive a change to what its code was compiled from.

numba judges a cached function fresh by its own file's mtime and size alone; the loops have helpers
from cpu_numeric.py and constants from gpu_tables.py compiled in. cpu_numeric.jit stamps the cache
with a digest of every source in the package instead (kernels/cpu_numeric.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from vllm_ngram_style.kernels import cpu_entropy, cpu_loops, cpu_numeric

KERNELS = os.path.dirname(os.path.abspath(cpu_numeric.__file__))


def test_every_cached_loop_carries_the_package_digest():
    cached = {f.py_func.__name__: f for mod in (cpu_loops, cpu_entropy) for f in vars(mod).values()
              if hasattr(f, "py_func") and f.__module__ == mod.__name__ and hasattr(f._cache, "_cache_file")}
    assert {"steer_context_rows", "steer_history_rows", "steer_context_rows_par", "entropy_rows"} <= set(cached)
    for name, disp in cached.items():
        assert disp._cache._cache_file._source_stamp == cpu_numeric.sources_digest(), name


def _run(pkg_parent) -> str:
    code = "import stalepkg.loop as m; print(m.f())"
    env = dict(os.environ, PYTHONPATH=str(pkg_parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_change_to_a_helper_module_alone_recompiles(tmp_path):
    """loop.py never changes; only helper.py does, keeping its size and (restored) its mtime, as a quick
    edit or a checkout can: with numba's own freshness test the second run returns the stale 1."""
    pkg = tmp_path / "stalepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(os.path.join(KERNELS, "cpu_numeric.py"), pkg / "cpu_numeric.py")
    (pkg / "helper.py").write_text("K = 1\n")
    (pkg / "loop.py").write_text("from .cpu_numeric import jit\nfrom .helper import K\n\n\n"
                                 "@jit()\ndef f():\n    return K\n")
    assert _run(tmp_path) == "1"
    assert list((pkg / "__pycache__").glob("loop.f-*.nbi")), "the cache was not written"
    st = os.stat(pkg / "helper.py")
    (pkg / "helper.py").write_text("K = 2\n")
    os.utime(pkg / "helper.py", ns=(st.st_atime_ns, st.st_mtime_ns))  # numba's stamp sees no change
    assert _run(tmp_path) == "2"
