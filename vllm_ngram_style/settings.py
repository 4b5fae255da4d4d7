"""The plugin's environment variables, one place.

They are named NGRAM_STYLE_*: vLLM logs a warning for every unknown VLLM_* variable in its
environment, and refuses to start on one with --fail-on-environ-validation. The VLLM_NGRAM_STYLE_*
names of version 0.1 are still read, after the new ones.

    NGRAM_STYLE_CONFIG        JSON style configuration file (``serve`` writes and sets it)
    NGRAM_STYLE_BACKEND       auto | cpu | triton | reference: which implementation of the op runs
    NGRAM_STYLE_CPU_THREADS   threads of the compiled CPU op (default 1)
    NGRAM_STYLE_CACHE         where converted models live
    NGRAM_STYLE_CORPORA       the corpora folder of the benchmarks
    NGRAM_STYLE_LIVE_POLL_S   how often a live server checks its style files (default 1 s)
"""
from __future__ import annotations

import os
from typing import Mapping

PREFIX = "NGRAM_STYLE_"
LEGACY_PREFIX = "VLLM_NGRAM_STYLE_"


def env_name(short: str) -> str:
    return PREFIX + short


def getenv(short: str, environ: Mapping | None = None) -> str | None:
    """The value of NGRAM_STYLE_<short> (or, unset, of VLLM_NGRAM_STYLE_<short>); None when neither is set."""
    environ = os.environ if environ is None else environ
    return environ.get(PREFIX + short) or environ.get(LEGACY_PREFIX + short) or None
