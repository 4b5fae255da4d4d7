"""Benchmark machinery: the sync counter and the ratio pairing are measuring instruments, so they are
checked against known answers; the GPU step benchmark, the host-overhead script and the blend
benchmark run end to end on CPU at tiny sizes (the GPU script with vLLM blocked, as on the GPU
machines)."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _counts(fn):
    from vllm_ngram_style.testing.sync_counter import SyncCounter

    with SyncCounter() as c:
        fn()
    return dict(c.syncs), c.ops


def test_sync_counter_flags_syncing_ops_and_only_those():
    x = torch.arange(12)
    mask = x > 5
    rep = torch.full((12,), 2)
    cases = {
        "item": lambda: x[3].item(),
        "nonzero": lambda: torch.nonzero(mask),
        "bool_index": lambda: x[mask],
        "repeat_interleave": lambda: torch.repeat_interleave(x, rep),
        "unique": lambda: torch.unique(x),
        "masked_select": lambda: torch.masked_select(x, mask),
        "tensor_from_host_data": lambda: torch.tensor([1, 2, 3]),
    }
    for kind, fn in cases.items():
        syncs, _ = _counts(fn)
        assert syncs.get(kind, 0) >= 1, (kind, syncs)
    # The same work written without syncs counts zero.
    idx = torch.arange(6, 12)
    clean = [lambda: x.index_select(0, idx), lambda: torch.where(mask, x, -1), lambda: x.add_(0),
             lambda: torch.repeat_interleave(x, rep, output_size=24), lambda: (x * 2).sum(),
             lambda: x.index_put_((idx,), idx, accumulate=True)]
    for fn in clean:
        syncs, ops = _counts(fn)
        assert syncs == {} and ops >= 1, syncs


def test_summary_pairs_each_round_with_its_own_baseline():
    from vllm_ngram_style.bench.e2e import Variant, summarise

    variants = [Variant("(a)", "none", 0.0, 0), Variant("p", "plugin", 1.0, 1)]
    rows = []
    for rnd, (base_wall, mine_wall) in enumerate([(1.0, 1.02), (2.0, 2.04), (1.5, 1.53)]):  # drift between rounds
        for v, wall in zip(variants, (base_wall, mine_wall)):
            rows.append(dict(model="m", batch=4, variant=v.label, key=v.key, round=rnd, requests=8, steered=8,
                             tokens=100, wall=wall, cpu=wall, proc_cpu=0.01 * wall, tpot=0.01))
    s = {r["key"]: r for r in summarise(rows, variants)}
    p = s[variants[1].key]
    assert p["ratio_wall"] == pytest.approx(1 / 1.02) and p["ratio_cpu_range"][1] == pytest.approx(1 / 1.02)
    assert p["proc_share"] == pytest.approx(0.01) and s[variants[0].key]["ratio_cpu"] == 1.0
    assert p["tok_s_wall"] == pytest.approx(100 / 1.53)  # the median over rounds of the absolute throughput


def _run(args, timeout=240, block_vllm=False):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    if block_vllm:  # a GPU machine has no vLLM: `import vllm` must fail inside the script
        code = ("import runpy, sys; sys.modules['vllm'] = None; sys.argv = %r; "
                "runpy.run_path(sys.argv[0], run_name='__main__')" % (args,))
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable] + args
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_gpu_step_bench_cpu_smoke_without_vllm():
    out = _run(["benchmarks/gpu_step_bench.py", "--cpu-smoke", "--no-append"], block_vllm=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("correctness PASS") == 2  # 100% and 50% steered
    assert "a stand-in (vLLM not installed)" in out.stdout
    assert "would-be sync ops 0" in out.stdout and "FAIL" not in out.stdout


def test_host_overhead_tiny(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    from vllm_ngram_style.pack import save_pack
    from vllm_ngram_style.testing.tiny import sample_text
    from vllm_ngram_style.train import train_pack

    text = tmp_path / "t.txt"
    text.write_text(sample_text(200, seed=4))
    pack, _ = train_pack(tiny_model_dir, [str(text)], name="t", progress=False)
    save_pack(pack, str(tmp_path / "t.stylepack"))
    out = _run(["benchmarks/host_overhead.py", "--model", tiny_model_dir, "--pack", str(tmp_path / "t.stylepack"),
                "--batch", "6", "--vocab", "336", "--steps", "2", "--fractions", "1", "--backends", "reference",
                "triton", "naive", "--results", ""])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| V")]
    table = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in rows}
    assert len(table) == 5, rows
    # The V2 adapter on the kernel path: zero would-be syncs in apply; the reference op has its known ones.
    assert table[("V2", "triton, launch stubbed")].rstrip().endswith("**0** |")
    assert "repeat_interleave" in table[("V2", "reference (torch)")]


def test_blend_bench_quick():
    """blend_bench.py shares cpu_op_bench's timing: run it, so a change there cannot break it unseen."""
    out = _run(["benchmarks/blend_bench.py", "--quick"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sum of single-style edits: PASS" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| cpu |", "| reference |"))]
    assert len(rows) == 2 and all(float(line.split("|")[4]) > 0 for line in rows), rows
