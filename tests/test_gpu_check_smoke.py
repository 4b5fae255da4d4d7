"""benchmarks/gpu_check.sh end to end on CPU (--cpu-smoke: tiny sizes, Triton interpreter), with vLLM
made unimportable as on the GPU machines, writing its files to $OUT as it would there."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_smoke_without_vllm(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['vllm'] = None  # as on the GPU machines\n")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHON=sys.executable, OUT=str(out),
               PYTHONPATH=os.pathsep.join([str(block)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "GPU CHECK: all stages ran" in res.stdout
    assert "correctness: PASS" in res.stdout and res.stdout.count("correctness PASS") == 2
    assert "a stand-in (vLLM not installed)" in res.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "gpu_step_bench.json", "gpu_step_bench.md",
                     "kernel_bench.json", "kernel_bench.md"], files
    md = (out / "gpu_check.md").read_text()
    assert "| goal | measured | target | verdict |" in md and "CPU (Triton interpreter" in md
