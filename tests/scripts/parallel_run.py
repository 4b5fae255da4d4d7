"""Run the offline engine with the style processor at a given parallel size and print every
request's greedy token ids as JSON. Used by tests/test_parallel.py (one process per run: vLLM's
CPU workers bind threads per process)."""
import json
import sys


def main(model_dir: str, packs_json: str, tp: int, dp: int) -> None:
    from vllm import LLM, SamplingParams

    packs = json.loads(packs_json)
    llm = LLM(model=model_dir, dtype="float32", max_model_len=256, enforce_eager=True, seed=0, max_num_seqs=16,
              tensor_parallel_size=tp, data_parallel_size=dp, distributed_executor_backend="mp" if tp > 1 else None,
              logits_processors=["vllm_ngram_style:NgramStyleLogitsProcessor"],
              additional_config={"ngram_style": {"styles": packs, "modes": ["exact", "paper"]}})
    extras = [None, {"style": "alpha", "style_strength": 0.8}, {"style": "beta", "style_strength": 1.5},
              {"style": "alpha", "style_strength": 2.0, "style_mode": "paper"},
              {"style": "beta", "style_strength": 1.2, "style_adaptive": 1, "style_loop_guard": 3},
              {"style": "alpha", "style_strength": 3.0, "style_loop_guard": 2, "style_loop_penalty": 2.0}]
    prompts = [[5, 17, 40, 9], [3], [101, 7, 7, 22, 64, 12], [250, 2, 33], [14, 15], [60, 61, 62, 63, 64]]
    reqs = [(p, e) for p in prompts for e in extras]  # 36 requests, 30 steered
    params = [SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, extra_args=e) for _, e in reqs]
    outs = llm.generate([{"prompt_token_ids": p} for p, _ in reqs], params, use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
