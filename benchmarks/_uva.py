"""The token history where vLLM keeps it: UVA memory (pinned host memory mapped into the device's
address space), or device memory.

vLLM 0.32/0.33's Model Runner V2 keeps ``req_states.all_token_ids`` [S, L] int32 as a UVA view by
default (device memory only with n-gram speculative decoding: vllm/v1/worker/gpu/states.py,
buffer_utils.py): ``UvaBuffer`` allocates ``torch.zeros(..., pin_memory=True)`` and wraps its pointer
as a CUDA tensor with vLLM's own op (``get_accelerator_view_from_cpu_tensor``). So a kernel's reads
of the history cross PCIe. Without vLLM the same view is made here: under unified virtual addressing
a pointer returned by cudaHostAlloc (what torch's pinned allocator uses) is valid on the device as
it is, so it can be wrapped as a CUDA tensor through ``__cuda_array_interface__`` (torch only), or,
failing that, through cupy + DLPack. ``check_uva`` proves on the device that host writes are seen by
device reads and device writes by the host, before any timing is trusted.
"""
from __future__ import annotations

import torch

_TYPESTR = {torch.int32: "<i4", torch.int64: "<i8", torch.float32: "<f4", torch.float16: "<f2",
            torch.bfloat16: "<V2", torch.uint8: "|u1", torch.bool: "|b1"}


def cuda_array_interface(host: torch.Tensor) -> dict:
    """The __cuda_array_interface__ (version 3) describing ``host``'s memory as a device array: its own
    pointer (valid on the device under UVA), shape, strides in bytes, type. Pure Python."""
    if host.dtype not in _TYPESTR or host.dtype == torch.bfloat16:
        raise TypeError(f"no __cuda_array_interface__ type for {host.dtype}")
    return {"shape": tuple(host.shape), "typestr": _TYPESTR[host.dtype], "data": (host.data_ptr(), False),
            "strides": tuple(s * host.element_size() for s in host.stride()), "version": 3}


class _DeviceArray:
    """Holds the interface and keeps the pinned tensor alive as long as a view of it exists."""

    def __init__(self, host: torch.Tensor):
        self.host = host
        self.__cuda_array_interface__ = cuda_array_interface(host)


def uva_view(host: torch.Tensor, device="cuda") -> tuple[torch.Tensor, str]:
    """A CUDA tensor aliasing the pinned CPU tensor ``host`` (no copy) and how it was made."""
    if not host.is_pinned():
        raise ValueError("uva_view needs a pinned CPU tensor (torch.zeros(..., pin_memory=True))")
    try:
        view = torch.as_tensor(_DeviceArray(host), device=device)
        how = "torch.as_tensor over __cuda_array_interface__ of the pinned tensor's pointer"
    except Exception as torch_error:  # noqa: BLE001 - try cupy's route before giving up
        try:
            import cupy

            mem = cupy.cuda.UnownedMemory(host.data_ptr(), host.numel() * host.element_size(), host)
            arr = cupy.ndarray(tuple(host.shape), dtype=str(host.dtype).replace("torch.", ""),
                               memptr=cupy.cuda.MemoryPointer(mem, 0),
                               strides=tuple(s * host.element_size() for s in host.stride()))
            view = torch.utils.dlpack.from_dlpack(arr)
            how = "cupy UnownedMemory over the pinned pointer, to torch through DLPack"
        except Exception as cupy_error:  # noqa: BLE001
            raise RuntimeError(f"cannot wrap pinned memory as a CUDA tensor: torch: {torch_error}; "
                               f"cupy: {cupy_error}") from cupy_error
    if view.data_ptr() != host.data_ptr() or view.device.type != "cuda":
        raise RuntimeError("the UVA view does not alias the pinned buffer")
    return view, how


def token_history(shape, dtype, device, where: str):
    """all_token_ids [S, L] as vLLM keeps it: where='device' (device memory) or 'uva' (pinned host memory
    seen through a device view). Returns (device tensor to hand the kernel, host tensor or None, how)."""
    if where == "device":
        return torch.zeros(shape, dtype=dtype, device=device), None, "device memory"
    if where != "uva":
        raise ValueError(f"where must be 'device' or 'uva', got {where!r}")
    host = torch.zeros(shape, dtype=dtype, pin_memory=True)  # [S, L], as vLLM's UvaBuffer allocates it
    view, how = uva_view(host, device)
    return view, host, how


def check_uva(view: torch.Tensor, host: torch.Tensor) -> str:
    """Proves the aliasing on the device: host writes are seen by device reads (after the host wrote),
    device writes by the host (after a sync). Raises AssertionError otherwise; returns what was checked."""
    torch.cuda.synchronize()
    s, length = host.shape
    rows = torch.arange(min(s, 64))
    # host -> device: numbers the device cannot guess, written through the CPU tensor
    pattern = (torch.arange(rows.numel() * length, dtype=torch.int64).reshape(rows.numel(), length) * 7919 + 13)
    host[rows] = (pattern % 100_003).to(host.dtype)
    seen = view[rows.to(view.device)].to(torch.int64).cpu()  # a device kernel reads the mapped memory
    assert torch.equal(seen, (pattern % 100_003)), "device reads of the UVA view do not see the host's writes"
    # device -> host: a device kernel writes, the host reads after the sync
    view[rows.to(view.device)] = view[rows.to(view.device)] + 1
    torch.cuda.synchronize()
    assert torch.equal(host[rows].to(torch.int64), pattern % 100_003 + 1), "host does not see the device's writes"
    host.zero_()
    return f"UVA view of pinned host memory: host writes seen on the device, device writes seen on the host " \
           f"({rows.numel()} x {length} {str(host.dtype).replace('torch.', '')})"
