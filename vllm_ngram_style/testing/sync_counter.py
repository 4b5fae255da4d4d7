"""SyncCounter: a TorchDispatchMode counting the ops that would make the host wait for the GPU."""
from __future__ import annotations

from collections import Counter

SYNC_OPS_DOC = """\
Ops counted as host-device synchronisations (they force the host to wait for the GPU, or copy
pageable host memory to it, when the tensors live on a CUDA device):
- aten._local_scalar_dense: .item(), int()/float()/bool() of a tensor, `if tensor:`;
- aten.nonzero: torch.nonzero, torch.where(cond) with one argument, argwhere;
- aten.masked_select;
- aten.index / index_put_ / _index_put_impl_ with a boolean (or uint8) mask index (nonzero inside);
- aten.repeat_interleave.Tensor without output_size (the output length is a sum of the repeats);
- aten._unique / _unique2 / unique_dim / unique_consecutive / unique_dim_consecutive;
- aten.bincount, aten.equal (a Python bool), aten.allclose;
- aten.lift_fresh: a tensor made from host data during the step (torch.tensor(list),
  torch.from_numpy): on a GPU it then needs a host-to-device copy from pageable memory;
- aten._to_copy / aten.copy_ between the host and a device: device-to-host always; host-to-device
  unless non_blocking from pinned memory. Only visible when a device exists (on a CPU-only
  machine every tensor is on the host, so these cannot be told apart from ordinary copies)."""


class SyncCounter:
    """TorchDispatchMode counting would-be syncs (see SYNC_OPS_DOC) and all ops, by category.

        with SyncCounter() as c:
            proc.apply(logits)
        c.syncs -> Counter({"repeat_interleave": 3, ...}); c.ops -> total aten ops dispatched
    """

    _UNIQUE = ("_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.syncs: Counter = Counter()
        self.ops = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
                kwargs = kwargs or {}
                counter.ops += 1
                kind = counter.classify(func, args, kwargs)
                if kind:
                    counter.syncs[kind] += 1
                return func(*args, **kwargs)

        self._mode = _Mode()

    @property
    def total(self) -> int:
        return sum(self.syncs.values())

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    @classmethod
    def classify(cls, func, args, kwargs) -> str | None:
        import torch

        name = func._schema.name.split("::")[-1]
        overload = func._overloadname
        if name == "_local_scalar_dense":
            return "item"
        if name in ("nonzero", "masked_select", "bincount", "equal", "allclose"):
            return name
        if name in cls._UNIQUE:
            return "unique"
        if name == "repeat_interleave" and overload in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None:
            return "repeat_interleave"
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
                return "bool_index"
        if name in ("lift_fresh", "lift_fresh_copy"):
            return "tensor_from_host_data"
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst_dev = args[0].device if name == "copy_" else kwargs.get("device") or src.device
            dst_dev = torch.device(dst_dev)
            if isinstance(src, torch.Tensor) and src.device.type != dst_dev.type:
                if dst_dev.type == "cpu":
                    return "device_to_host"
                non_blocking = (args[2] if name == "copy_" and len(args) > 2 else kwargs.get("non_blocking", False))
                if not (non_blocking and src.is_pinned()):
                    return "pageable_host_to_device"
        return None
