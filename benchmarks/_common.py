"""What the GPU benchmark scripts share: importing the package from this checkout, timing, the run's
description, and where results go.

Used by benchmarks/kernel_bench.py, gpu_step_bench.py and gpu_check.py, which must run on a bare GPU
machine (torch, triton and numpy only: no vLLM, nothing installed). Import this module after the
script has set TRITON_INTERPRET for --cpu-smoke (triton reads it when first imported; this module
imports torch, which does not import triton).
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import shlex
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def bootstrap():
    """Import vllm_ngram_style and its .kernels (./kernels, which setup.py maps) from this checkout, also
    where the package is not installed."""
    sys.path.insert(0, ROOT)
    try:
        import vllm_ngram_style.kernels.launcher  # noqa: F401  (installed, e.g. editable)
    except ModuleNotFoundError:
        import vllm_ngram_style

        spec = importlib.util.spec_from_file_location("vllm_ngram_style.kernels", os.path.join(ROOT, "kernels", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(ROOT, "kernels")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        vllm_ngram_style.kernels = mod


class Timer:
    """Wall-clock, host and CUDA-event timings of a callable; medians over repetitions.

    smoke: wall_us times a single call with no warm-up (the Triton interpreter: the numbers are not
    performance, and many calls would only be slow)."""

    def __init__(self, device, smoke: bool = False):
        self.cuda = device.type == "cuda"
        self.smoke = smoke
        self.cycles_per_us = None
        if self.cuda:  # calibrate torch.cuda._sleep, used to queue launches behind GPU work
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(1000)
            s.record()
            torch.cuda._sleep(2_000_000)
            e.record()
            e.synchronize()
            self.cycles_per_us = 2_000_000 / max(1.0, s.elapsed_time(e) * 1000)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def wall_us(self, fn, n=50, reps=3) -> float:
        """Wall clock per call over n back-to-back calls (host cost included), waiting for the device at
        the end; median of reps."""
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e6
        fn()
        self.sync()
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            self.sync()
            out.append((time.perf_counter() - t0) * 1e6 / n)
        return statistics.median(out)

    def host_us(self, fn, n=50, reps=3) -> float:
        """Host time per call: calls queued behind a GPU sleep, so the host never waits for the device."""
        if self.smoke:
            return self.wall_us(fn)
        fn()
        self.sync()
        out = []
        for _ in range(reps):
            if self.cuda:
                torch.cuda._sleep(int(n * 2000 * self.cycles_per_us))  # ~2 ms per call of GPU backlog
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - t0) * 1e6 / n)
            self.sync()
        return statistics.median(out)

    def gpu_us(self, fn, host_us: float, n=20, reps=5) -> float | None:
        """GPU time per call from CUDA events, the calls queued behind a GPU sleep longer than their host
        cost (so the events see only GPU work). None on CPU."""
        if not self.cuda:
            return None
        fn()
        torch.cuda.synchronize()
        cycles = int(max(2 * n * host_us, 500) * self.cycles_per_us)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        out = []
        for _ in range(reps):
            torch.cuda._sleep(cycles)
            s.record()
            for _ in range(n):
                fn()
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e) * 1000 / n)
        return statistics.median(out)


def pick_device(smoke: bool):
    """CPU under --cpu-smoke, else CUDA; None (after saying so) where there is no CUDA device."""
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke for the CPU interpreter check")
        return None
    return torch.device("cpu" if smoke else "cuda")


def table_shape(smoke: bool) -> dict:
    """Synthetic table shape for kernels/synthetic.py's synth_style: Don Quixote's on a GPU, tiny under
    --cpu-smoke (the interpreter). Call after bootstrap()."""
    from vllm_ngram_style.kernels.synthetic import DON_QUIXOTE

    if smoke:
        return dict(contexts=(1, 12, 30), entries=(16, 60, 60), top_k=16)
    return dict(contexts=DON_QUIXOTE["contexts"], entries=DON_QUIXOTE["entries"], top_k=512)


def describe_run(device, argv=None, script=None) -> dict:
    """Card (as torch names it), date, versions and the command, for every results section."""
    import numpy as np
    import triton

    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter; NOT performance)"
    command = shlex.join(["python", os.path.relpath(script or sys.argv[0], ROOT)] + list(sys.argv[1:] if argv is None
                                                                                        else argv))
    return dict(card=card, date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
                numpy=np.__version__, cuda=getattr(torch.version, "cuda", None), command=command,
                env=f"torch {torch.__version__} (CUDA {getattr(torch.version, 'cuda', None)}), triton "
                    f"{triton.__version__}, numpy {np.__version__}")


def out_dir() -> str | None:
    """$OUT when set (the GPU machine returns only what is written there), else None."""
    return os.environ.get("OUT") or None


def write_results(markdown: str, name: str, device, append_to_results: bool) -> str:
    """Write a results section: to $OUT/<name>.md when $OUT is set, else (on a GPU, when asked) appended
    to benchmarks/RESULTS.md. Returns where it went ('' if nowhere)."""
    out = out_dir()
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"{name}.md")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(markdown)
        return path
    if device.type == "cuda" and append_to_results:
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write("\n" + markdown)
        return RESULTS
    return ""


def copy_bandwidth(device, nbytes=1 << 30) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), median of 5; None on CPU."""
    if device.type != "cuda":
        return None
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(6):
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        out.append(2 * nbytes / (s.elapsed_time(e) / 1e3))
    del a, b
    torch.cuda.empty_cache()
    return statistics.median(out[1:])


def fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:,.1f}x"
