"""Both logits-processor adapters driven through vLLM's call protocols, without an engine.

V1: random add / remove / move (unidirectional and swap) sequences, as vLLM's persistent batch
emits them, with live output lists growing between steps. V2: vLLM's real LogitsProcRequestState
and LogitsContext dataclasses over small stand-ins for its device buffers, with recycled slots,
rows reordered every step and partial (chunked) prefills. Every step, every row is checked against
an independent row-by-row computation (helpers.Oracle: one ReferenceSteering per style x mode);
unsteered rows must be untouched bit for bit.
"""
import os
import random
import types

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from helpers import MODES, Oracle, train_test_packs  # noqa: E402

from vllm_ngram_style.errors import ConfigError  # noqa: E402

pytest.importorskip("vllm")

V = 336  # logits width of the tiny model: wider than the tokenizer's 320 ids
HAS_KERNEL = os.path.exists(os.path.join(os.path.dirname(__file__), "..", "kernels", "launcher.py"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def packs(tiny_tokenizer_dir, tmp_path_factory):
    return train_test_packs(tiny_tokenizer_dir, tmp_path_factory.mktemp("packs"))


def fake_vllm_config(tokenizer_dir, packs, speculative=None):
    """The attributes of VllmConfig that the processors read."""
    model = types.SimpleNamespace(tokenizer=tokenizer_dir, model=tokenizer_dir, tokenizer_revision=None,
                                  trust_remote_code=False)
    return types.SimpleNamespace(additional_config={"ngram_style": {"styles": dict(packs)}},
                                 speculative_config=speculative, model_config=model)


def random_extra(rng, styles):
    r = rng.random()
    if r < 0.25:
        return None  # unsteered
    if r < 0.3:
        return {"style": rng.choice(styles), "style_strength": 0.0}  # exactly unsteered
    extra = {"style": rng.choice(styles), "style_strength": rng.choice([0.05, 0.3, 1.0, 2.5])}
    if rng.random() < 0.5:
        extra["style_mode"] = rng.choice(MODES)
    if rng.random() < 0.3:
        extra["style_adaptive"] = 1
    if rng.random() < 0.4:
        extra["style_loop_guard"] = rng.choice([2, 3, 5])
        if rng.random() < 0.5:
            extra["style_loop_penalty"] = rng.choice([0.5, 3.0, 20.0])
    return extra


def repetitive_tokens(rng, n):
    """Token streams with loops in them, so the loop guard has something to ban."""
    base = [rng.randrange(3, 320) for _ in range(rng.randint(1, 4))]
    return [base[i % len(base)] if rng.random() < 0.7 else rng.randrange(3, 320) for i in range(n)]


# ---- V1 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_v1_random_batch_updates(tiny_tokenizer_dir, packs, backend, monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from vllm_ngram_style import NgramStyleLogitsProcessor

    monkeypatch.setenv("VLLM_NGRAM_STYLE_BACKEND", backend)
    proc = NgramStyleLogitsProcessor(fake_vllm_config(tiny_tokenizer_dir, packs), torch.device("cpu"), False)
    assert proc.core.backend == backend
    assert proc.is_argmax_invariant() is False
    oracle = Oracle(packs)
    rng = random.Random(0)
    batch = []  # index -> (extra, prompt list, live output list); contiguous like vLLM's persistent batch
    assert proc.apply(torch.zeros(0, V)) is not None
    checked = steered_rows = moves = swaps = 0
    for step in range(80):
        removed, added, moved = [], [], []
        for i in sorted(rng.sample(range(len(batch)), k=min(len(batch), rng.randint(0, 2))), reverse=True):
            removed.append(i)
            batch[i] = None
        for _ in range(rng.randint(0, 3) if len(batch) < 12 else 0):
            extra = random_extra(rng, ["alpha", "beta"])
            prompt = repetitive_tokens(rng, rng.randint(1, 12))  # some shorter than the context
            req = (extra, prompt, [])
            hole = next((i for i, r in enumerate(batch) if r is None), None)
            if hole is None:
                batch.append(req)
                hole = len(batch) - 1
            else:
                batch[hole] = req
                removed.remove(hole)  # vLLM pops a reused index from `removed`
            added.append((hole, SamplingParams(extra_args=extra), prompt, req[2]))
        while batch and batch[-1] is None:
            batch.pop()
        i = 0
        while i < len(batch):  # condense: move the last request into each hole
            if batch[i] is None:
                last = len(batch) - 1
                batch[i], batch[last] = batch[last], None
                moved.append((last, i, MoveDirectionality.UNIDIRECTIONAL))
                moves += 1
                while batch and batch[-1] is None:
                    batch.pop()
            i += 1
        if len(batch) >= 2 and rng.random() < 0.5:
            a, b = rng.sample(range(len(batch)), 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, MoveDirectionality.SWAP))
            swaps += 1
        update = BatchUpdate(len(batch), removed, added, moved) if (removed or added or moved) else None
        proc.update_state(update)
        for _, prompt, out in batch:  # the engine appends each sampled token to the live lists
            if rng.random() < 0.9:  # mostly repeats of recent tokens: loops for the loop guard
                out.append(rng.randrange(3, 320) if rng.random() < 0.3 else rng.choice((prompt + out)[-4:]))
        logits = torch.randn(len(batch), V) * 3
        original = logits.clone()
        result = proc.apply(logits)
        for i, (extra, prompt, out) in enumerate(batch):
            expect = oracle.row(original[i], extra, prompt + out, out)
            if backend == "reference":
                assert torch.equal(result[i], expect), f"step {step} row {i} extra {extra}"
            else:  # the compiled op's tables hold float32 deltas: float32 rounding only
                torch.testing.assert_close(result[i], expect, rtol=1e-5, atol=1e-4)
            if torch.equal(expect, original[i]):
                assert torch.equal(result[i].view(torch.int32), original[i].view(torch.int32))
            else:
                steered_rows += 1
            checked += 1
    assert checked > 300 and steered_rows > 150 and moves > 10 and swaps > 10


def test_v1_refuses_speculative_decoding(tiny_tokenizer_dir, packs):
    from vllm_ngram_style import NgramStyleLogitsProcessor

    with pytest.raises(ConfigError, match="does not support speculative decoding"):
        NgramStyleLogitsProcessor(fake_vllm_config(tiny_tokenizer_dir, packs, speculative=object()), "cpu", False)


def test_engine_start_errors(tiny_tokenizer_dir, packs, tmp_path):
    from vllm_ngram_style.testing.tiny import build_tiny_tokenizer
    from vllm_ngram_style import NgramStyleLogitsProcessor

    other = build_tiny_tokenizer(str(tmp_path / "other_tok"), vocab_size=300)
    with pytest.raises(ConfigError, match=r"style 'alpha': style pack 'alpha' was trained with another tokenizer"):
        NgramStyleLogitsProcessor(fake_vllm_config(other, packs), "cpu", False)
    with pytest.raises(ConfigError, match=r"style 'gone': style pack not found"):
        NgramStyleLogitsProcessor(fake_vllm_config(tiny_tokenizer_dir, {"gone": str(tmp_path / "x.stylepack")}),
                                  "cpu", False)
    cfg = fake_vllm_config(tiny_tokenizer_dir, packs)
    cfg.additional_config = {}
    with pytest.raises(ConfigError, match="no styles are configured"):
        NgramStyleLogitsProcessor(cfg, "cpu", False)
    cfg.additional_config = {"ngram_style": {"styles": dict(packs), "modes": ["exact", "fancy"]}}
    with pytest.raises(ConfigError, match=r"modes \['exact', 'fancy'\]: unknown style mode 'fancy'"):
        NgramStyleLogitsProcessor(cfg, "cpu", False)


# ---- V2 -----------------------------------------------------------------------------------------------

class _DeviceBuffer:
    """Stand-in for vLLM's StagedWriteTensor / UvaBackedTensor: the processor only reads .gpu."""

    def __init__(self, tensor):
        self.gpu = tensor
        self.np = tensor.numpy()


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_v2_protocol(tiny_tokenizer_dir, packs, backend, monkeypatch):
    """70 steps on the reference op and the compiled CPU op; 50 on the Triton kernel (run by its interpreter
    on CPU: slow)."""
    if backend == "triton" and not HAS_KERNEL:
        pytest.skip("the Triton kernel (kernels/launcher.py) has not landed")
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from vllm_ngram_style import NgramStyleLogitsProcessor as NgramStyleLogitsProcessorV2

    monkeypatch.setenv("VLLM_NGRAM_STYLE_BACKEND", backend)
    S, L = 10, 96  # noqa: N806  slots, max model length
    all_ids = torch.full((S, L), -7, dtype=torch.int32)  # garbage beyond total_len, as in vLLM
    prompt_len = torch.zeros(S, dtype=torch.int32)
    total_len = torch.zeros(S, dtype=torch.int32)
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=S, vocab_size=V,
                                all_token_ids=_DeviceBuffer(all_ids), prompt_len=_DeviceBuffer(prompt_len),
                                prefill_len=_DeviceBuffer(prompt_len.clone()), total_len=_DeviceBuffer(total_len))
    proc = NgramStyleLogitsProcessorV2(fake_vllm_config(tiny_tokenizer_dir, packs), rs)
    assert proc.core.backend == backend
    oracle = Oracle(packs)
    rng = random.Random(1)
    live = {}  # slot -> [extra, prefill_done (tokens computed so far)]
    free = list(range(S))
    checked = steered_rows = partial_rows = 0
    for step in range(50 if backend == "triton" else 70):
        for slot in [s for s in live if rng.random() < 0.15 or total_len[s] >= L - 1]:
            del live[slot]  # finished: no hook; the slot is recycled later with new params
            free.append(slot)
        rng.shuffle(free)
        for _ in range(rng.randint(0, 3)):
            if not free:
                break
            slot = free.pop()
            extra = random_extra(rng, ["alpha", "beta"])
            prompt = repetitive_tokens(rng, rng.randint(1, 20))
            all_ids[slot, :len(prompt)] = torch.tensor(prompt, dtype=torch.int32)
            prompt_len[slot] = total_len[slot] = len(prompt)
            needs = proc.add_request(slot, SamplingParams(extra_args=extra))
            assert needs == bool(extra and extra.get("style_strength", 0.3) != 0)
            live[slot] = [extra, rng.randint(1, len(prompt))]  # a chunked prefill may stop short
        proc.apply_staged_writes()
        if not live:
            continue
        slots = list(live)
        rng.shuffle(slots)  # rows are reordered every step
        pos = []
        for s in slots:
            done = live[s][1]
            pos.append(done - 1 if done < total_len[s] else int(total_len[s]) - 1)  # newest known token
            partial_rows += done < total_len[s]
        r = len(slots)
        row_slot = torch.tensor(slots, dtype=torch.int32)
        pos_t = torch.tensor(pos, dtype=torch.int64)
        ctx = LogitsContext(expanded_idx_mapping=row_slot, idx_mapping=row_slot, idx_mapping_np=np.array(slots),
                            expanded_local_pos=torch.zeros(r, dtype=torch.int32),
                            input_ids=all_ids[row_slot.long(), pos_t], pos=pos_t,
                            seq_lens_upper_bound_np=np.array(pos) + 1)
        logits = torch.randn(r, V) * 3
        original = logits.clone()
        result = proc.apply(logits, ctx)
        for i, s in enumerate(slots):
            tokens = all_ids[s, :pos[i] + 1].tolist()
            generated = all_ids[s, prompt_len[s]:pos[i] + 1].tolist()
            expect = oracle.row(original[i], live[s][0], tokens, generated)
            if backend == "reference":
                assert torch.equal(result[i], expect), f"step {step} slot {s}"
            else:  # float32 deltas in the compiled ops' tables, another summation order: float32 rounding only
                torch.testing.assert_close(result[i], expect, rtol=1e-5, atol=1e-4)
            if torch.equal(expect, original[i]):
                assert torch.equal(result[i].view(torch.int32), original[i].view(torch.int32))
            else:
                steered_rows += 1
            checked += 1
        for s in slots:  # sample: a finished prefill appends one token; a partial one advances
            if live[s][1] < total_len[s]:
                live[s][1] = min(int(total_len[s]), live[s][1] + rng.randint(1, 8))
            else:
                tok = rng.randrange(3, 320) if rng.random() < 0.3 else int(all_ids[s, total_len[s] - 1])
                all_ids[s, total_len[s]] = tok
                total_len[s] += 1
                live[s][1] = int(total_len[s])
    assert checked > (150 if backend == "triton" else 250) and steered_rows > checked // 3 and partial_rows > 5


def test_v2_skips_unsteered_batches_without_work(tiny_tokenizer_dir, packs):
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from vllm_ngram_style import NgramStyleLogitsProcessor as NgramStyleLogitsProcessorV2

    ids = torch.zeros(4, 8, dtype=torch.int32)
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=4, vocab_size=V,
                                all_token_ids=_DeviceBuffer(ids), prompt_len=None, prefill_len=None, total_len=None)
    proc = NgramStyleLogitsProcessorV2(fake_vllm_config(tiny_tokenizer_dir, packs), rs)
    assert proc.add_request(0, SamplingParams()) is False
    assert proc.add_request(1, SamplingParams(extra_args={"style": "alpha"})) is True
    assert proc.add_request(1, SamplingParams(extra_args={"style": "alpha", "style_strength": 0})) is False
    proc.apply_staged_writes()

    class _Poison:  # any touch of the device-side context would raise
        def __getattr__(self, name):
            raise AssertionError(f"touched ctx.{name}")

    ctx = LogitsContext(expanded_idx_mapping=_Poison(), idx_mapping=_Poison(), idx_mapping_np=np.array([1, 0]),
                        expanded_local_pos=_Poison(), input_ids=_Poison(), pos=_Poison(),
                        seq_lens_upper_bound_np=np.array([1, 1]))
    logits = torch.randn(2, V)
    assert proc.apply(logits, ctx) is logits


_SYNCING = {"item", "tolist", "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "cpu",
            "numpy", "__bool__", "__int__", "__float__", "__index__"}


def _sync_calls(fn):
    """Names of torch calls made by fn() that make a CUDA host wait for the device (or that would,
    on CUDA): .item(), .tolist(), nonzero, boolean-mask indexing, repeat_interleave without
    output_size, Python truth values of tensors, device -> host copies."""
    from torch.overrides import TorchFunctionMode

    calls = []

    def flat(xs):
        for x in xs:
            if isinstance(x, (tuple, list)):
                yield from flat(x)
            else:
                yield x

    class Detector(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", str(func))
            if name in _SYNCING:
                calls.append(name)
            elif name == "repeat_interleave" and "output_size" not in kwargs:
                calls.append(name)
            elif name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1 and any(
                    isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in flat([args[1]])):  # the index
                calls.append(name + "[bool mask]")
            elif name == "to" and any(str(a) == "cpu" for a in flat(list(args[1:]) + list(kwargs.values()))):
                calls.append("to(cpu)")
            return func(*args, **kwargs)

    with Detector():
        fn()
    return calls


def test_v2_apply_makes_no_host_sync_calls(tiny_tokenizer_dir, packs, monkeypatch):
    """Everything the V2 adapter and the core do around the kernel launch (slot gathers, history
    windows, adaptive scale, loop guard) is device-only. The launch itself is recorded, not run:
    the kernel's own launcher is checked in the kernel tests. The entropy is the torch formula the
    GPU ops use (the reference op's); the CPU op's reads numpy views, which only exist on the host."""
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from vllm_ngram_style import NgramStyleLogitsProcessor as NgramStyleLogitsProcessorV2

    S, L = 6, 40  # noqa: N806
    ids = torch.randint(3, 300, (S, L), dtype=torch.int32)
    plen = torch.full((S,), 5, dtype=torch.int32)
    rs = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=S, vocab_size=V,
                                all_token_ids=_DeviceBuffer(ids), prompt_len=_DeviceBuffer(plen),
                                prefill_len=_DeviceBuffer(plen.clone()), total_len=_DeviceBuffer(plen + 20))
    monkeypatch.setenv("VLLM_NGRAM_STYLE_BACKEND", "reference")
    proc = NgramStyleLogitsProcessorV2(fake_vllm_config(tiny_tokenizer_dir, packs), rs)
    launches = []
    real_op = proc.core.op

    class _Launcher:  # a recording stand-in for the kernel launch (every backend has this call shape)
        normalised_entropy = staticmethod(real_op.normalised_entropy)

        def apply_from_history(self, *args, **kw):
            launches.append((args, kw))

    proc.core.op = _Launcher()
    extras = [{"style": "alpha", "style_adaptive": 1, "style_loop_guard": 3}, None,
              {"style": "beta", "style_loop_guard": 2, "style_mode": "paper", "style_loop_penalty": 2.0},
              {"style": "alpha"}]
    for slot, extra in enumerate(extras):
        proc.add_request(slot, SamplingParams(extra_args=extra))
    proc.apply_staged_writes()
    slots = [2, 0, 1, 3]
    row_slot = torch.tensor(slots, dtype=torch.int32)
    pos = torch.tensor([24, 24, 24, 3], dtype=torch.int64)
    ctx = LogitsContext(expanded_idx_mapping=row_slot, idx_mapping=row_slot, idx_mapping_np=np.array(slots),
                        expanded_local_pos=torch.zeros(4, dtype=torch.int32), input_ids=ids[row_slot.long(), pos],
                        pos=pos, seq_lens_upper_bound_np=pos.numpy() + 1)
    logits = torch.randn(4, V)
    assert _sync_calls(lambda: proc.apply(logits, ctx)) == []
    assert len(launches) == 1 and launches[0][1]["row_scale"] is not None
    # the detector itself works: the reference op's gather syncs on CUDA, so do masks and .item()
    assert _sync_calls(lambda: (logits[logits > 0], logits.sum().item())) == ["__getitem__[bool mask]", "item"]
    assert "repeat_interleave" in _sync_calls(lambda: Oracle(packs).row(logits[0], {"style": "alpha"}, [5, 6], []))


def test_vllm_loaders_and_frontend_validators(tiny_tokenizer_dir, packs):
    """vLLM's own loaders accept the one class (and its two old names) for both interfaces and build
    the right implementation; vLLM's frontend validators (which hold the config but do not pass it)
    turn our errors into 400s."""
    import types

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample.logits_processor import _load_custom_logitsprocs, validate_logits_processors_parameters
    from vllm.v1.worker.gpu.sample.logits_processor import (build_custom_logits_processors,
                                                            build_custom_logits_processors_params_validator)
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from vllm_ngram_style.adapters.v1 import V1StyleProcessor
    from vllm_ngram_style.adapters.v2 import V2StyleProcessor
    from vllm_ngram_style.launch import PROCESSOR_CLASS

    old_v1 = "vllm_ngram_style.vllm_v1:NgramStyleLogitsProcessor"
    old_v2 = "vllm_ngram_style.vllm_v2:NgramStyleLogitsProcessorV2"
    cfg = fake_vllm_config(tiny_tokenizer_dir, packs)
    for name in (PROCESSOR_CLASS, old_v1, old_v2):
        (v1_cls,) = [c for c in _load_custom_logitsprocs([name]) if c.__name__ == "NgramStyleLogitsProcessor"]
        (v2_cls,) = _load_v2_logitsprocs_by_fqcns([name])
        assert v1_cls is v2_cls
        assert type(v1_cls(cfg, torch.device("cpu"), False)) is V1StyleProcessor  # the V1 sampler's call
        rs = types.SimpleNamespace(device=torch.device("cpu"), max_num_reqs=4, vocab_size=V,
                                   all_token_ids=_DeviceBuffer(torch.zeros((4, 16), dtype=torch.int32)),
                                   prompt_len=_DeviceBuffer(torch.zeros(4, dtype=torch.int32)),
                                   prefill_len=_DeviceBuffer(torch.zeros(4, dtype=torch.int32)),
                                   total_len=_DeviceBuffer(torch.zeros(4, dtype=torch.int32)))
        (built,) = build_custom_logits_processors(cfg, rs, False, [name])  # Model Runner V2's own builder
        assert type(built) is V2StyleProcessor
    V1_CLASS = V2_CLASS = PROCESSOR_CLASS  # noqa: N806  the validators below see the one class

    v2_validate = build_custom_logits_processors_params_validator([V2_CLASS])

    class _InputProcessor:  # what vLLM's frontend looks like to validate_params: it holds vllm_config
        vllm_config = fake_vllm_config(tiny_tokenizer_dir, {"alpha": packs["alpha"]})

        def v1(self, params):
            validate_logits_processors_parameters([V1_CLASS], params)

        def v2(self, params):
            v2_validate(params)

    front = _InputProcessor()
    for check in (front.v1, front.v2):
        check(SamplingParams(extra_args={"style": "alpha", "style_strength": 1}))
        check(SamplingParams())
        with pytest.raises(VLLMValidationError, match=r"unknown style 'beta' \(style\); this server offers: alpha"):
            check(SamplingParams(extra_args={"style": "beta"}))
