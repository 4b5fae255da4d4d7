"""benchmarks/train_scale.py runs end to end at toy sizes (its real runs are documented one-offs)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_train_scale_smoke(tiny_tokenizer_dir, tmp_path):
    from vllm_ngram_style.testing.tiny import sample_text

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text(200, seed=4))
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "..", "benchmarks", "train_scale.py"),
                           "--synthetic", "300K", "--text", "60K", "--tokenizer", tiny_tokenizer_dir,
                           "--text-files", str(corpus), "--memory", "1M", "--data-dir", str(tmp_path),
                           "--results", str(results)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = results.read_text()
    assert "| synthetic | 300,000 |" in table and "| text x" in table
    synthetic = next(line for line in table.splitlines() if line.startswith("| synthetic"))
    assert int(synthetic.split("|")[8]) > 0  # it spilled under the 1M budget
    assert sorted(os.listdir(tmp_path)) == ["RESULTS.md", "c.txt"]  # data, spills and packs removed
