"""Files written piece by piece are byte-identical to safetensors.numpy.save_file's; reading back."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from vllm_ngram_style.pack import _checksum
from vllm_ngram_style.safetensors_stream import PresizedWriter, SafetensorsReader, write_arrays


def tensors():
    rng = np.random.default_rng(0)
    return {"b": rng.integers(0, 9, (5, 2)).astype(np.int32), "a": np.arange(7, dtype=np.int64),
            "empty": np.zeros((0, 3), np.int64), "d": rng.random(3), "e": rng.random(4).astype(np.float32),
            "z.x": np.arange(3, dtype=np.uint32), "u": np.arange(2, dtype=np.uint64)}


def test_pieces_give_the_bytes_of_save_file(tmp_path):
    t = tensors()
    meta = {"name": 'q"uote\\', "n": [1, 2]}
    ref = dict(meta)
    ref["checksum"] = _checksum(t, meta)  # as pack.save_pack does
    save_file(t, str(tmp_path / "ref"), metadata={"key": json.dumps(ref)})
    with PresizedWriter(str(tmp_path / "mine"), [(k, v.dtype, v.shape) for k, v in t.items()], "key", meta) as w:
        for k in sorted(t, reverse=True):  # any order, in pieces
            for i in range(0, max(1, len(t[k])), 2):
                w[k].append(t[k][i:i + 2])
        assert w.finish() == ref["checksum"]
    assert (tmp_path / "mine").read_bytes() == (tmp_path / "ref").read_bytes()
    assert not os.path.exists(str(tmp_path / "mine.tmp"))
    r = SafetensorsReader(str(tmp_path / "mine"))
    assert json.loads(r.metadata["key"]) == ref and r.checksum(meta) == ref["checksum"]
    for k, v in t.items():
        got = r.read(k)
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v)
    np.testing.assert_array_equal(r.read_rows("b", 1, 3), t["b"][1:3])


def test_wrong_sizes_and_interruptions_leave_no_file(tmp_path):
    path = str(tmp_path / "out")
    with pytest.raises(ValueError, match="more rows"):
        with PresizedWriter(path, [("a", np.int64, (2,))], "k", {}) as w:
            w["a"].append(np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="0 of 16 bytes"):
        with PresizedWriter(path, [("a", np.int64, (2,))], "k", {}) as w:
            w.finish()
    with pytest.raises(ValueError, match="want int64"):
        with PresizedWriter(path, [("a", np.int64, (2,))], "k", {}) as w:
            w["a"].append(np.arange(2, dtype=np.int32))
    with pytest.raises(KeyboardInterrupt):
        with PresizedWriter(path, [("a", np.int64, (2,))], "k", {}) as w:
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="not supported"):
        PresizedWriter(path, [("a", np.int8, (2,))], "k", {})


def test_reader_rejects_malformed_files(tmp_path):
    write_arrays(str(tmp_path / "ok"), {"a": np.arange(4, dtype=np.int64)}, "k", {})
    good = (tmp_path / "ok").read_bytes()
    cases = {"short": good[:5], "huge_header": (10**9).to_bytes(8, "little") + good[8:],
             "not_json": good[:8] + b"x" * (len(good) - 8), "cut": good[:-8]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError):
            SafetensorsReader(str(tmp_path / name))
