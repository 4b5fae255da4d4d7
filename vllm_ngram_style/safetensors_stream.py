"""safetensors files written and read piece by piece, for packs and count shards larger than memory.

The safetensors library writes a file from tensors that are all in memory, and reads through a
memory map (whose touched pages count as the process's resident memory). This module writes
the same bytes from tensors appended in pieces straight into their places in the file (their
shapes are known first), and reads row ranges with plain reads. The format (github.com/huggingface/safetensors): an 8-byte little-endian header
length, a JSON header ({"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}}, no
spaces, padded with spaces to a multiple of 8), then the tensors' bytes, laid out by dtype (widest
first, in the library's dtype order) then name. tests/test_safetensors_stream.py checks that a
file written here is byte-identical to safetensors.numpy.save_file's.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

# safetensors' dtype codes, in the order of its Dtype enum (the layout sorts by it, descending).
_DTYPES = [("I32", np.int32), ("U32", np.uint32), ("F32", np.float32), ("F64", np.float64),
           ("I64", np.int64), ("U64", np.uint64)]
CODE = {np.dtype(t): code for code, t in _DTYPES}
RANK = {code: i for i, (code, _) in enumerate(_DTYPES)}
DTYPE = {code: np.dtype(t).newbyteorder("<") for code, t in _DTYPES}
_COPY_BYTES = 16 << 20  # copy and hash in 16 MiB pieces


def _checksum_prefix(meta: dict) -> "hashlib._Hash":
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h


class _Region:
    """One tensor's bytes in the file being written, filled front to back by ``append``."""

    def __init__(self, fd: int, name: str, dtype: np.dtype, shape: tuple[int, ...], start: int):
        self.fd, self.name, self.dtype, self.shape, self.start = fd, name, dtype, shape, start
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.written = 0

    def append(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        if arr.dtype != self.dtype or arr.shape[1:] != self.shape[1:]:
            raise ValueError(f"tensor {self.name}: got {arr.dtype}{arr.shape}, want {self.dtype}{self.shape}")
        data = np.ascontiguousarray(arr, dtype=self.dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
        if self.written + data.size > self.nbytes:
            raise ValueError(f"tensor {self.name}: more rows than its shape {self.shape}")
        view = memoryview(data)
        while view.nbytes:  # pwrite may write less than asked
            done = os.pwrite(self.fd, view, self.start + self.written)
            self.written += done
            view = view[done:]


class PresizedWriter:
    """Writes one safetensors file whose tensors' shapes are known before their contents: the
    header is sized first (the checksum that goes into it has a fixed length), the file is laid out,
    each tensor is appended in pieces at its place (from several threads if need be), then the
    checksum is computed from the file and the header written. The file is built as ``path``.tmp
    and renamed once complete, so no half-written file ever has the real name.

    specs: (name, dtype, shape) per tensor. metadata_key: the header metadata key whose value is
    json.dumps(meta + {"checksum": ...}), the checksum being pack._checksum's."""

    def __init__(self, path: str, specs: list[tuple[str, object, tuple[int, ...]]], metadata_key: str, meta: dict):
        self.path, self.tmp, self.key, self.meta = path, path + ".tmp", metadata_key, dict(meta)
        specs = [(name, np.dtype(dt), tuple(int(x) for x in shape)) for name, dt, shape in specs]
        for name, dtype, _ in specs:
            if dtype not in CODE:
                raise ValueError(f"tensor {name}: dtype {dtype} is not supported")
        self.order = sorted(specs, key=lambda s: (-RANK[CODE[s[1]]], s[0]))
        self.header_len = len(self._header("0" * 64))
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.regions: dict[str, _Region] = {}
        offset = 8 + self.header_len
        for name, dtype, shape in self.order:
            self.regions[name] = _Region(self.fd, name, dtype, shape, offset)
            offset += self.regions[name].nbytes
        os.ftruncate(self.fd, offset)

    def _header(self, checksum: str) -> bytes:
        header: dict = {"__metadata__": {self.key: json.dumps(dict(self.meta, checksum=checksum))}}
        offset = 0
        for name, dtype, shape in self.order:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": CODE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        return blob + b" " * (-len(blob) % 8)

    def __getitem__(self, name: str) -> _Region:
        return self.regions[name]

    def finish(self) -> str:
        """Check every tensor is complete, write checksum and header, rename into place. Returns the checksum."""
        for r in self.regions.values():
            if r.written != r.nbytes:
                raise ValueError(f"tensor {r.name}: {r.written} of {r.nbytes} bytes written")
        h = _checksum_prefix(self.meta)
        for name in sorted(self.regions):
            r = self.regions[name]
            h.update(f"{name}|{r.dtype.newbyteorder('<').str}|{r.shape}".encode())
            pos, end = r.start, r.start + r.nbytes
            while pos < end:
                piece = os.pread(self.fd, min(_COPY_BYTES, end - pos), pos)
                h.update(piece)
                pos += len(piece)
        digest = h.hexdigest()
        header = self._header(digest)
        assert len(header) == self.header_len  # the checksum has a fixed length
        os.pwrite(self.fd, struct.pack("<Q", len(header)) + header, 0)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        return digest

    def abort(self) -> None:
        """Drop the partial file (after an error or an interruption)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.fd >= 0:
            self.abort()


def write_arrays(path: str, tensors: dict[str, np.ndarray], metadata_key: str, meta: dict) -> str:
    """PresizedWriter for tensors already in memory (what save_pack does, checksum included)."""
    with PresizedWriter(path, [(k, v.dtype, v.shape) for k, v in tensors.items()], metadata_key, meta) as w:
        for k, v in tensors.items():
            w[k].append(v)
        return w.finish()


class SafetensorsReader:
    """Reads a safetensors file's metadata and row ranges of its tensors without a memory map.

    Raises ValueError for anything that is not a well-formed safetensors file."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 1 << 30):
                raise ValueError("header length beyond the end of the file")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"header is not JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.tensors: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        for name, info in header.items():
            try:
                dtype, shape = DTYPE[info["dtype"]], tuple(int(s) for s in info["shape"])
                start, stop = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"tensor {name!r}: unsupported or malformed entry") from exc
            if stop - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or self.data_start + stop > size:
                raise ValueError(f"tensor {name!r}: data offsets do not match its shape or the file size")
            self.tensors[name] = (dtype, shape, self.data_start + start)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of tensor ``name`` along its first axis."""
        dtype, shape, begin = self.tensors[name]
        stop = min(stop, shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64))
        m = max(0, stop - start)
        arr = np.fromfile(self.path, dtype=dtype, count=m * row, offset=begin + start * row * dtype.itemsize)
        return arr.reshape((m, *shape[1:]))

    def read(self, name: str) -> np.ndarray:
        return self.read_rows(name, 0, self.tensors[name][1][0]) if self.tensors[name][1] else \
            np.fromfile(self.path, dtype=self.tensors[name][0], count=1, offset=self.tensors[name][2]).reshape(())

    def checksum(self, meta: dict) -> str:
        """pack._checksum of the file's tensors with ``meta``, reading the tensors in pieces."""
        h = _checksum_prefix(meta)
        with open(self.path, "rb") as fh:
            for name in sorted(self.tensors):
                dtype, shape, begin = self.tensors[name]
                h.update(f"{name}|{dtype.str}|{shape}".encode())
                fh.seek(begin)
                left = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                while left:
                    piece = fh.read(min(left, _COPY_BYTES))
                    if not piece:
                        raise ValueError("file ends inside a tensor")
                    h.update(piece)
                    left -= len(piece)
        return h.hexdigest()
