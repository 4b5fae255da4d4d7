"""NgramStyleLogitsProcessor: the one class to name in vLLM, whichever model runner vLLM picks.

    --logits-processors vllm_ngram_style:NgramStyleLogitsProcessor

vLLM decides the runner itself (vLLM 0.33 config/vllm.py ``use_v2_model_runner``: some features
force Model Runner V2, others fall back to V1), and each runner's loader accepts only subclasses of
its own interface. This class subclasses both interfaces, so both loaders accept it, and its
constructor returns the implementation that matches the arguments it was called with:
``(vllm_config, device, is_pin_memory)`` from the V1 sampler -> adapters.v1.V1StyleProcessor,
``(vllm_config, req_states)`` from Model Runner V2 -> adapters.v2.V2StyleProcessor. Both loaders only
check the class; neither checks the instance's type.

``validate_params`` (vLLM's API process, at request admission) parses the request's extras
against the server's configured styles: see validation.py.
"""
from __future__ import annotations

from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Interface
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Interface

from .validation import validate_sampling_params


def _is_v2_call(args: tuple, kwargs: dict) -> bool:
    """Model Runner V2 passes (vllm_config, req_states); the V1 sampler (vllm_config, device, is_pin_memory)."""
    if "req_states" in kwargs:
        return True
    if "device" in kwargs or "is_pin_memory" in kwargs:
        return False
    return len(args) == 1 and hasattr(args[0], "all_token_ids")


class NgramStyleLogitsProcessor(_V1Interface, _V2Interface):
    """Batched n-gram style steering for vLLM; becomes the V1 or the V2 implementation on construction."""

    _prepared = None  # (SteeringCore, StyleConfig) given by with_core(); None: built from the vLLM config
    # The implementations built (subclasses may name their own, e.g. to record calls in tests).
    v1_impl: type | None = None  # default adapters.v1.V1StyleProcessor
    v2_impl: type | None = None  # default adapters.v2.V2StyleProcessor

    def __new__(cls, vllm_config, *args, **kwargs):
        if _is_v2_call(args, kwargs):
            from .adapters.v2 import V2StyleProcessor

            impl = cls.v2_impl or V2StyleProcessor
        else:
            from .adapters.v1 import V1StyleProcessor

            impl = cls.v1_impl or V1StyleProcessor
        if cls._prepared is not None:
            from .validation import register_active

            register_active(cls._prepared[1])
        return impl(vllm_config, *args, prepared=cls._prepared, **kwargs)  # not an instance of cls: no __init__

    def __init__(self, *args, **kwargs):  # pragma: no cover - __new__ returns an implementation instead
        raise AssertionError("unreachable")

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_sampling_params(sampling_params)

    @classmethod
    def with_core(cls, core, cfg) -> type:
        """A subclass whose instances use a prepared (SteeringCore, StyleConfig) instead of loading the
        configured packs: for benchmarks with synthetic tables, and for sharing one core."""
        return type(cls.__name__, (cls,), {"_prepared": (core, cfg), "__module__": cls.__module__})

    # The abstract methods of both interfaces; never called (instances are implementations).
    def apply(self, *args):  # pragma: no cover
        raise AssertionError("unreachable")

    def is_argmax_invariant(self) -> bool:  # pragma: no cover
        return False

    def update_state(self, batch_update) -> None:  # pragma: no cover
        raise AssertionError("unreachable")
