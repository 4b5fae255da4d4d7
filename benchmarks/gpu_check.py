#!/usr/bin/env python
"""The GPU proof in one run (issue 15): every correctness check on the device, then every timing, then
the goals measured against their targets. At most ~8 minutes on an H100/H200 with torch + triton
(no vLLM, nothing installed); stops at the first correctness mismatch.

    bash benchmarks/gpu_check.sh                 # GPU machine; results to $OUT/ (or appended to RESULTS.md)
    bash benchmarks/gpu_check.sh --cpu-smoke     # the same stages, tiny sizes, CPU + Triton interpreter (< 1 min)

Stages:
1. environment: card (as torch names it), versions, the UVA view check (pinned host memory wrapped
   as a CUDA tensor; host writes seen on the device and back);
2. benchmarks/kernel_bench.py: the op's correctness on the device (standard / fast / graph launches,
   1 and 4 blend columns, history source from device memory and UVA, entropy kernel; whether the
   fast path proved itself), then its timings and floors;
3. benchmarks/gpu_step_bench.py: the V2 adapter (adaptive strength + loop guard, UVA and device
   history) against the reference adapter, its peak extra memory, syncs and timings against the 8B
   decode-step stand-in;
4. the goals table. Files under $OUT (the GPU machine returns only those): gpu_check.md (everything),
   gpu_check.json, kernel_bench.{md,json}, gpu_step_bench.{md,json}; gpu_check.sh adds gpu_check.log.
"""
from __future__ import annotations

import os
import sys

SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, describe_run, out_dir, pick_device  # noqa: E402

KERNEL_BUDGET_S = 170  # kernel_bench stops starting configurations after this
STEP_BUDGET_S = 130  # gpu_step_bench likewise (its own clock)


def environment(device) -> str:
    lines = []
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"{p.name}: {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
                     f"compute capability {p.major}.{p.minor}")
        from _uva import check_uva, token_history

        try:
            view, host, how = token_history((8, 4096), torch.int32, device, "uva")
            lines.append(check_uva(view, host) + f" (made by {how})")
            uva = True
        except Exception as exc:  # noqa: BLE001 - without UVA the device-memory numbers are still worth having
            lines.append(f"UVA view UNAVAILABLE ({type(exc).__name__}: {exc}): history timed in device memory only")
            uva = False
    else:
        lines.append("CPU: Triton interpreter, tiny sizes: a functional check of the script, NOT performance")
        uva = False
    return "\n".join(f"- {x}" for x in lines), uva


def _pick(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def goals(kernel_rows, step_rows, floors, vocab=128256) -> list[tuple]:
    """(goal, measured, target, verdict) for every goal of issue 15 the run measures."""
    out = []

    def add(name, value, target, ok, unit=""):
        if value is None:
            out.append((name, "not measured", target, "-"))
        else:
            out.append((name, f"{value:,.2f}{unit}", target, "met" if ok(value) else "NOT met"))

    for b, limit in ((256, 8.0), (1024, 20.0)):
        r = _pick(kernel_rows, B=b, V=vocab, styles=4)
        add(f"kernel GPU time, B={b}, V={vocab}, 4 styles mixed", r and r["kernel_gpu_us"], f"<= {limit:g} us",
            lambda x, limit=limit: x <= limit, " us")
    r = _pick(kernel_rows, B=256, V=vocab, styles=4)
    add("wall per step incl. launch (fast path, eager), B=256", r and r.get("fast_wall_us"), "<= 15 us",
        lambda x: x <= 15, " us")
    add("naive per-request loop / fast wall, B=256", r and r.get("fast_wall_us") and r["naive_us"] / r["fast_wall_us"],
        ">= 300x", lambda x: x >= 300, "x")
    add("torch reference op / fast wall, B=256", r and r.get("fast_wall_us") and r["ref_us"] / r["fast_wall_us"],
        ">= 3x", lambda x: x >= 3, "x")
    add("4-style blend / one style per row, kernel GPU, B=256", r and r.get("blend4_gpu_us") and r["kernel_gpu_us"]
        and r["blend4_gpu_us"] / r["kernel_gpu_us"], "<= 1.5x", lambda x: x <= 1.5, "x")
    for b in (256, 1024):
        s = _pick(step_rows, batch=b, history="uva", fraction=1.0)
        add(f"V2 step (adaptive + loop guard, UVA history) / decode step, wall, B={b}",
            s and 100 * s["wall_us"] / s["decode_us"], "<= 1%", lambda x: x <= 1.0, "%")
        add(f"V2 step / decode step, GPU time, B={b}", s and s["gpu_us"] and 100 * s["gpu_us"] / s["decode_us"],
            "<= 1%", lambda x: x <= 1.0, "%")
    u, d = _pick(step_rows, batch=256, history="uva", fraction=1.0), _pick(step_rows, batch=256, history="device",
                                                                           fraction=1.0)
    add("V2 step GPU time, UVA history / device history, B=256 (> 1.5x: add a device context cache)",
        u and d and u["gpu_us"] and d["gpu_us"] and u["gpu_us"] / d["gpu_us"], "<= 1.5x", lambda x: x <= 1.5, "x")
    m = _pick(step_rows, batch=1024, history="uva", fraction=1.0)
    add("peak extra device memory of one apply(), B=1024", m and m["apply_peak_extra_bytes"] is not None
        and m["apply_peak_extra_bytes"] / 2**20, "<= 16 MB", lambda x: x <= 16, " MiB")
    return out


def render_goals(rows) -> str:
    return "\n".join(["| goal | measured | target | verdict |", "|---|---|---|---|"]
                     + [f"| {g} | {m} | {t} | {v} |" for g, m, t, v in rows]) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under the Triton interpreter")
    ap.add_argument("--no-append", action="store_true", help="without $OUT: do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    device = pick_device(args.cpu_smoke)
    if device is None:
        return 2
    run = describe_run(device, argv, script=os.path.join(os.path.dirname(__file__), "gpu_check.sh"))
    sections = [f"## GPU check (issue 15): {run['card']}, {run['date']}", "",
                f"`bash benchmarks/gpu_check.sh{' --cpu-smoke' if args.cpu_smoke else ''}`; {run['env']}.", ""]
    data, failed = dict(run=run), None

    def stage(name, fn):
        nonlocal failed
        t = time.perf_counter()
        print(f"\n===== {name} =====", flush=True)
        try:
            result = fn()
        except Exception:  # noqa: BLE001 - report it, keep what the other stages measured
            tb = traceback.format_exc()
            print(tb, flush=True)
            sections.extend([f"### {name}: raised", "", "```", tb[-3000:], "```", ""])
            return None
        print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
        return result

    env = stage("environment", lambda: environment(device))
    uva = False
    if env is None:
        failed = "environment"
    else:
        env, uva = env
        sections.extend(["### Environment", "", env, ""])
    smoke = ["--cpu-smoke"] if args.cpu_smoke else []
    kernel = step = None
    if not failed:
        import kernel_bench

        kernel = stage("kernel_bench", lambda: kernel_bench.run(smoke + [
            "--batches", "1,64,256,1024", "--vocabs", "128256,151936", "--styles", "1,4",
            "--budget", str(KERNEL_BUDGET_S), "--no-append"] + ([] if uva else ["--no-uva"])))
        if kernel is None or kernel["rc"] != 0:
            failed = "kernel correctness" if kernel and kernel.get("problems") else "kernel_bench"
        if kernel:
            sections.append(kernel["md"])
    if not failed:
        import gpu_step_bench

        step = stage("gpu_step_bench", lambda: gpu_step_bench.run(smoke + ["--budget", str(STEP_BUDGET_S), "--no-append"]
                                                                  + ([] if uva else ["--history", "device"])))
        if step is None or step["rc"] != 0:
            failed = "V2 adapter correctness" if step else "gpu_step_bench"
        if step:
            sections.append(step["md"])
    table = goals(kernel["rows"] if kernel else [], step["rows"] if step else [],
                  kernel.get("floors", {}) if kernel else {})
    verdict = f"STOPPED at {failed}" if failed else "all stages ran"
    sections.extend(["### Goals (issue 15), measured in this run", "", render_goals(table),
                     f"Verdict: {verdict}; {time.perf_counter() - t0:.0f} s in all.", ""])
    md = "\n".join(sections)
    data.update(goals=table, verdict=verdict, kernel_rows=kernel and kernel["rows"], step_rows=step and step["rows"],
                fast_path=kernel and kernel.get("fast_path"))
    if out_dir():
        os.makedirs(out_dir(), exist_ok=True)
        with open(os.path.join(out_dir(), "gpu_check.md"), "w", encoding="utf-8") as fh:
            fh.write(md)
        with open(os.path.join(out_dir(), "gpu_check.json"), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, default=str)
        print(f"\nwritten to {out_dir()}/gpu_check.md")
    elif device.type == "cuda" and not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write("\n" + md)
        print(f"\nappended to {RESULTS}")
    print("\n" + render_goals(table))
    print(f"GPU CHECK: {verdict} ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
