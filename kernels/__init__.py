"""Every implementation of the steering contract (vllm_ngram_style/contract.py), side by side:

- reference.py: the torch reference op (any device; the yardstick in tests);
- steer_kernel.py + launcher.py: the Triton kernel and its launcher (CUDA; CPU via the interpreter);
- cpu_kernel.py + cpu_loops.py: the CPU op, loops compiled with numba (the default on CPU);
- gpu_tables.py: the flat table buffer the compiled kernels read (layout and host mirror).

They share one call shape, so the steering core never branches on the backend:

    op.apply(logits, variant, strength, context, row_scale=None)
        logits [R, V] float, edited in place; variant [R] or [R, K] int (-1: no style); strength
        the same shape, float; context [R, >= max_order-1] int, right-aligned, -1 where missing;
        row_scale [R] float or None (multiplies every strength of the row).
    op.apply_from_history(logits, row_slot, row_last_pos, all_token_ids, slot_variant,
                          slot_strength, row_scale=None)
        the same, with per-slot state and each row's context read from a token history
        all_token_ids [S, L] at row_last_pos [R] (index of the newest known token of row_slot [R]).

Row r gets row_scale[r] * sum_k strength[r, k] * sum_n D_{variant[r, k], n}(c_n(r), t); columns
with variant -1 (or outside the table) or strength 0 add nothing, and a row with no active column is
never written (bit for bit). Each op has ``backend`` (its name), ``max_order``, ``context_len``.

``make_steering_op`` picks one: NGRAM_STYLE_BACKEND=auto (default: triton on CUDA, cpu on CPU) |
triton | cpu | reference.
"""
from __future__ import annotations

import logging

from vllm_ngram_style.settings import env_name, getenv

logger = logging.getLogger(__name__)

ENV_BACKEND = env_name("BACKEND")  # NGRAM_STYLE_BACKEND (vllm_ngram_style/settings.py)
BACKENDS = ("auto", "triton", "cpu", "reference")


def resolve_backend(backend: str | None, device) -> str:
    """The backend name to build for ``device``: auto -> triton on CUDA, cpu on CPU, reference elsewhere."""
    import torch

    choice = (backend or getenv("BACKEND") or "auto").lower()
    if choice not in BACKENDS:
        from vllm_ngram_style.errors import ConfigError

        raise ConfigError(f"{ENV_BACKEND}={choice[:40]!r}: choose one of {', '.join(BACKENDS)}")
    if choice == "auto":
        kind = torch.device(device).type
        return "triton" if kind == "cuda" else "cpu" if kind == "cpu" else "reference"
    return choice


def make_steering_op(variants: list, device, backend: str | None = None):
    """The op for ``variants`` (a list of CompiledStyle; a row's variant id is its index) on ``device``.
    An automatic choice that fails to build falls back to the reference op with one warning; an
    explicit one raises."""
    explicit = (backend or getenv("BACKEND") or "auto").lower() != "auto"
    name = resolve_backend(backend, device)
    if name == "triton":
        try:
            from .launcher import TritonSteering  # lazy: triton is only needed on this path

            return TritonSteering(variants, device)
        except Exception as exc:  # missing or broken triton: the reference is correct, only slower
            if explicit:
                raise
            logger.warning("vllm-ngram-style: Triton kernel unavailable (%s); using the torch reference op", exc)
    elif name == "cpu":
        try:
            from .cpu_kernel import CpuSteering  # lazy: numba is only needed on this path

            return CpuSteering(variants, device)  # compiles (or loads numba's cache) here, not on the first step
        except Exception as exc:  # missing numba, or a compile failure: the reference is correct, only slower
            if explicit:
                raise
            logger.warning("vllm-ngram-style: compiled CPU op unavailable (%s); using the torch reference op", exc)
    from .reference import ReferenceSteering

    return ReferenceSteering(variants, device)
