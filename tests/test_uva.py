"""The UVA history helper of the GPU benchmarks (benchmarks/_uva.py): its pure-Python part on CPU.

Wrapping pinned memory as a CUDA tensor and the host/device visibility check need a GPU
(benchmarks/gpu_check.sh runs them first thing); here: the __cuda_array_interface__ it builds, and the
refusals."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _uva  # noqa: E402


def test_interface_describes_the_tensor_memory():
    t = torch.arange(24, dtype=torch.int32).reshape(4, 6)
    iface = _uva.cuda_array_interface(t)
    assert iface == {"shape": (4, 6), "typestr": "<i4", "data": (t.data_ptr(), False), "strides": (24, 4), "version": 3}
    col = torch.zeros(5, 3, dtype=torch.int64).t()  # a transposed view: byte strides follow the view
    assert _uva.cuda_array_interface(col)["strides"] == (8, 24)
    assert _uva.cuda_array_interface(torch.zeros(2, dtype=torch.float32))["typestr"] == "<f4"
    with pytest.raises(TypeError, match="bfloat16"):
        _uva.cuda_array_interface(torch.zeros(2, dtype=torch.bfloat16))


def test_refusals_and_device_history():
    with pytest.raises(ValueError, match="pinned"):
        _uva.uva_view(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="where"):
        _uva.token_history((2, 3), torch.int32, "cpu", "host")
    hist, host, how = _uva.token_history((2, 3), torch.int32, "cpu", "device")
    assert host is None and how == "device memory" and hist.shape == (2, 3) and int(hist.abs().sum()) == 0
