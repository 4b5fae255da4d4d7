"""Stand-ins of our own for what vLLM hands the processors (never copies of vLLM's code): a
VllmConfig with the attributes the processors read, Model Runner V2 request state and LogitsContext,
SamplingParams. For benchmarks on machines without vLLM (the GPU machines) and for unit tests."""
from __future__ import annotations

import types


def fake_vllm_config(tokenizer_dir: str, styles: dict, modes=("exact",)):
    """The attributes of VllmConfig that the processors read (no engine)."""
    model = types.SimpleNamespace(tokenizer=tokenizer_dir, model=tokenizer_dir, tokenizer_revision=None,
                                  trust_remote_code=False)
    return types.SimpleNamespace(additional_config={"ngram_style": {"styles": dict(styles), "modes": list(modes)}},
                                 speculative_config=None, model_config=model)


class DeviceBuffer:
    """Stand-in for Model Runner V2's staged/UVA-backed tensors: the processor reads ``.gpu``."""

    def __init__(self, tensor):
        self.gpu = tensor  # the device tensor


def v2_request_states(max_num_reqs: int, max_model_len: int, vocab_size: int, device, token_dtype=None):
    """Stand-in for MRV2's request state: token history [S, L] on the device plus lengths [S]."""
    import torch

    dev = torch.device(device)
    token_dtype = token_dtype or torch.int32
    ids = torch.zeros((max_num_reqs, max_model_len), dtype=token_dtype, device=dev)  # [S, L]
    lens = torch.zeros(max_num_reqs, dtype=torch.int32, device=dev)  # [S]
    return types.SimpleNamespace(device=dev, max_num_reqs=max_num_reqs, vocab_size=vocab_size,
                                 all_token_ids=DeviceBuffer(ids), prompt_len=DeviceBuffer(lens),
                                 prefill_len=DeviceBuffer(lens.clone()), total_len=DeviceBuffer(lens.clone()))


def v2_logits_context(row_slot, pos, slots_np):
    """Stand-in for MRV2's LogitsContext: row -> slot [R] and newest-token position [R] on the
    device, and the host copy of the row -> slot mapping [R] (numpy)."""
    import numpy as np

    return types.SimpleNamespace(expanded_idx_mapping=row_slot, idx_mapping=row_slot, idx_mapping_np=slots_np,
                                 pos=pos, seq_lens_upper_bound_np=np.zeros(len(slots_np), np.int32))


def sampling_params_stand_in(extra_args):
    """What add_request reads from SamplingParams (used where vLLM is not installed)."""
    return types.SimpleNamespace(extra_args=extra_args)
