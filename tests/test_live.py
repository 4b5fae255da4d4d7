"""Live styles (live.py) without a server: styles added, replaced and removed while requests run;
a running request keeps the tables it started with; a bad update is refused and the old
configuration keeps serving; retired tables are dropped once no request uses them."""
import json
import logging
import os

import pytest
import torch

pytest.importorskip("vllm")
from helpers import train_test_packs  # noqa: E402

from vllm_ngram_style.config import ENV_CONFIG, read_config  # noqa: E402

V = 336


@pytest.fixture()
def setup(tiny_tokenizer_dir, tmp_path, monkeypatch):
    """Packs alpha, beta (and gamma, a copy of alpha's corpus counted again), a live config file, and
    the resolved file serve would write, named by NGRAM_STYLE_CONFIG."""
    packs = train_test_packs(tiny_tokenizer_dir, tmp_path)
    user = tmp_path / "styles.json"
    user.write_text(json.dumps({"styles": {"alpha": packs["alpha"]}}))
    spec = {"config_file": str(user)}
    cfg = read_config({"ngram_style": spec}, environ={})
    resolved = tmp_path / "resolved.json"
    from vllm_ngram_style.live import write_resolved

    write_resolved(str(resolved), cfg, spec)
    monkeypatch.setenv(ENV_CONFIG, str(resolved))
    return packs, user, resolved


def _processor(tokenizer_dir):
    import types

    from vllm_ngram_style import NgramStyleLogitsProcessor

    model = types.SimpleNamespace(tokenizer=tokenizer_dir, model=tokenizer_dir, tokenizer_revision=None,
                                  trust_remote_code=False)
    cfg = types.SimpleNamespace(additional_config={}, speculative_config=None, model_config=model,
                                parallel_config=types.SimpleNamespace(world_size=1))
    proc = NgramStyleLogitsProcessor(cfg, torch.device("cpu"), False)
    proc.live.close()  # the test drives poll_once itself: no timing races
    return proc


def _add(proc, index, extra, prompt, output):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    proc.update_state(BatchUpdate(index + 1, [], [(index, SamplingParams(extra_args=extra), prompt, output)], []))


def _edit(proc, index, z):
    out = z.clone()[None].expand(proc_batch(proc), -1).clone()
    proc.apply(out)
    return out[index]


def proc_batch(proc):
    return max(proc.rows) + 1 if proc.rows else 1


def _write(path, styles):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"styles": styles}))
    os.replace(tmp, path)  # atomic, as the docs ask operators to do
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even within one tick


def test_add_replace_remove_while_requests_run(tiny_tokenizer_dir, setup, caplog):
    from vllm_ngram_style.validation import config_for_validation

    packs, user, resolved = setup
    proc = _processor(tiny_tokenizer_dir)
    live = proc.live
    prompt, out0 = [5, 6, 7], [8, 9]
    _add(proc, 0, {"style": "alpha", "style_strength": 1.0}, prompt, out0)
    z = torch.randn(V, generator=torch.Generator().manual_seed(0))
    before = _edit(proc, 0, z)
    assert not torch.equal(before, z)

    # add beta: usable after the next step boundary, and the API process sees it
    _write(user, {"alpha": packs["alpha"], "beta": packs["beta"]})
    assert live.poll_once()
    proc.update_state(None)  # a step boundary
    assert live.updates == 1 and "beta" in proc.cfg.names
    assert read_config(None, {ENV_CONFIG: str(resolved)}).names == ["alpha", "beta"]
    assert config_for_validation().names == ["alpha", "beta"]
    _add(proc, 1, {"style": "beta", "style_strength": 1.0}, prompt, [8, 9])
    assert torch.equal(_edit(proc, 0, z), before)  # the running request: unchanged tables
    beta_edit = _edit(proc, 1, z)
    assert not torch.equal(beta_edit, z)

    # replace alpha with beta's pack: the running alpha request keeps its tables, a new one gets the new
    _write(user, {"alpha": packs["beta"], "beta": packs["beta"]})
    assert live.poll_once()
    proc.update_state(None)
    assert torch.equal(_edit(proc, 0, z), before)
    _add(proc, 2, {"style": "alpha", "style_strength": 1.0}, prompt, [8, 9])
    assert torch.equal(_edit(proc, 2, z), beta_edit)
    assert any("@" in v.name for v in proc.core.variants)  # the old alpha tables, retired

    # remove beta: new requests get a 400 from the HTTP middleware; one it let through just before the
    # removal was published passes vLLM's validate_params after it (beta is draining) and still resolves
    _write(user, {"alpha": packs["beta"]})
    assert live.poll_once()
    proc.update_state(None)
    assert config_for_validation().names == ["alpha"]
    from vllm_ngram_style.errors import RequestError
    from vllm_ngram_style.middleware import _check
    from vllm_ngram_style.validation import draining_names, validate_sampling_params

    class _P:
        extra_args = {"style": "beta"}

    body = json.dumps({"model": "m", "prompt": "x", "vllm_xargs": {"style": "beta"}}).encode()
    refused = _check(body, ("vllm_xargs",), config_for_validation)
    assert refused is not None and "unknown style 'beta'" in refused[0]
    assert draining_names() == ["beta"] and validate_sampling_params(_P()).components[0][0] == "beta"

    class _Q:
        extra_args = {"style": "gamma"}

    with pytest.raises(RequestError, match="unknown style 'gamma'"):  # never configured: refused everywhere
        validate_sampling_params(_Q())
    _add(proc, 3, {"style": "beta", "style_strength": 1.0}, prompt, [8, 9])  # validated before the removal
    assert torch.equal(_edit(proc, 3, z), beta_edit)
    assert torch.equal(_edit(proc, 0, z), before)

    # a bad update is refused with a log line naming it; the old configuration keeps serving
    bad = user.parent / "bad.stylepack"
    bad.write_bytes(b"not a pack")
    caplog.set_level(logging.ERROR)
    _write(user, {"alpha": packs["beta"], "delta": str(bad)})
    assert not live.poll_once()
    assert any("style update refused" in r.message and "delta" in r.message for r in caplog.records)
    proc.update_state(None)
    assert proc.cfg.names == ["alpha", "beta"] or "delta" not in proc.cfg.names
    assert config_for_validation().names == ["alpha"]

    # the requests finish: the retired tables go
    from vllm.v1.sample.logits_processor import BatchUpdate

    _write(user, {"alpha": packs["beta"]})
    proc.update_state(BatchUpdate(3, [0, 1, 3], [], []))  # every request but the new alpha one finished
    live.report_references({v for r in proc.rows.values() for v in r.variants})
    import vllm_ngram_style.live as live_mod

    live_mod.GRACE_S, saved = 0.0, live_mod.GRACE_S
    try:
        assert live.poll_once()
    finally:
        live_mod.GRACE_S = saved
    proc.update_state(None)
    assert not any("@" in v.name for v in proc.core.variants), [v.name for v in proc.core.variants]
    assert torch.equal(_edit(proc, 2, z), beta_edit)  # the request still running kept its (current) tables


def test_a_touched_file_with_the_same_styles_builds_nothing(tiny_tokenizer_dir, setup):
    packs, user, _ = setup
    proc = _processor(tiny_tokenizer_dir)
    _write(user, {"alpha": packs["alpha"]})
    assert not proc.live.poll_once()
