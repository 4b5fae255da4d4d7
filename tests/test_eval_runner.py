"""Sweep construction: configurations, family -> steering arguments, prompts data."""
import pytest

from vllm_ngram_style.errors import ConfigError
from vllm_ngram_style.evaluation.prompts import load_prompts, style_instruction
from vllm_ngram_style.evaluation.runner import PAPER_LAMBDAS, EvalSettings, family_steer


def test_default_sweep_configs():
    cfgs = EvalSettings().configs()
    labels = [c.label for c in cfgs]
    assert len(labels) == len(set(labels))
    # unsteered + prompt-only + 4 families x 13 nonzero lambdas + prompt+best x 13
    assert len(cfgs) == 2 + 4 * 13 + 13
    assert PAPER_LAMBDAS == (0, .05, .1, .15, .2, .25, .3, .4, .5, .6, .7, .8, .9, 1.0)
    assert [c.instructed for c in cfgs[:2]] == [False, True]


def test_family_lambdas_override():
    s = EvalSettings(lambdas=(0, .5, 1), family_lambdas={"paper": (0.1,)}, prompt_lambdas=())
    fams = [(c.family, c.strength) for c in s.configs()]
    assert ("paper", 0.1) in fams and ("paper", 0.5) not in fams and ("exact", 0.5) in fams


def test_family_steer_arguments():
    assert family_steer("unsteered", "q", 0.5, 4) is None
    assert family_steer("best", "q", 0.0, 4) is None
    b = family_steer("best", "q", 0.3, 4)
    assert b.extra_args() == {"style": "q", "style_strength": 0.3, "style_mode": "exact", "style_adaptive": 1,
                              "style_loop_guard": 4}
    assert family_steer("prompt+best", "q", 0.3, 3).loop_guard == 3
    assert family_steer("paper", "q", 1.0, 4).extra_args()["style_mode"] == "paper"
    assert family_steer("exact+adaptive", "q", 1.0, 4).extra_args()["style_loop_guard"] == 0
    with pytest.raises(ConfigError):
        family_steer("nonsense", "q", 1.0, 4)


def test_prompts_data():
    prompts = load_prompts()
    assert len(prompts) == 20
    cats = [p.category for p in prompts]
    assert {c: cats.count(c) for c in set(cats)} == {"narrative": 5, "dialogue": 5, "expository": 5, "technical": 5}
    sub = load_prompts(per_category=1)
    assert [p.category for p in sub] == ["narrative", "dialogue", "expository", "technical"]
    assert "Cervantes" in style_instruction("cervantes_don_quixote")
    assert "some_corpus" in style_instruction("some_corpus")


def test_kn_family_maps_to_kn_mode():
    from vllm_ngram_style.evaluation.runner import family_steer

    steer = family_steer("kn", "quixote", 0.5, 4)
    assert (steer.mode, steer.strength, steer.style) == ("kn", 0.5, "quixote")
    assert family_steer("kn", "quixote", 0.0, 4) is None  # lambda 0 is the unsteered point
