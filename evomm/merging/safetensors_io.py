"""safetensors files read and written with numpy alone: headers, tensors as arrays, shard writers.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
byte offsets) and the tensors' bytes. ``evomm merge`` streams checkpoints through these helpers
without importing torch (about 1.5 s of a cold command): tensors are memory-mapped copy-on-write
(no read until a byte is used, writable for numba without a copy), bfloat16 is carried as its
uint16 bit pattern and converted to and from float32 exactly as torch converts it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np

from evomm.errors import ConfigError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype name -> the numpy dtype that holds its bits (BF16: uint16)
STORAGE = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
FLOATING = ("F64", "F32", "F16", "BF16")
# the adapters' dtype names
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def itemsize(dtype: str) -> int:
    return np.dtype(STORAGE[dtype]).itemsize


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def read_header(path: Path) -> tuple[dict, int]:
    """(header without ``__metadata__``, byte offset of the data) of one safetensors file."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def checkpoint_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> safetensors file of a local checkpoint folder, or None if it has none."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())
        return {name: folder / file for name, file in index["weight_map"].items()}
    if (folder / SINGLE_FILE).is_file():
        return {name: folder / SINGLE_FILE for name in read_header(folder / SINGLE_FILE)[0]}
    return None


class ArrayReader:
    """One checkpoint's tensors as numpy arrays, each file memory-mapped once."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self._open: dict[Path, tuple[dict, np.memmap]] = {}
        self._lock = threading.Lock()

    def _file(self, name: str) -> tuple[dict, np.memmap]:
        path = self.files[name]
        with self._lock:
            if path not in self._open:
                header, start = read_header(path)
                # copy-on-write: read lazily, writable (numba compiles one kernel for all inputs)
                data = np.memmap(path, dtype=np.uint8, mode="c", offset=start) if os.path.getsize(path) > start \
                    else np.zeros(0, np.uint8)
                self._open[path] = (header, data)
            return self._open[path]

    def dtype(self, name: str) -> str:
        return self._file(name)[0][name]["dtype"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(name)[0][name]["shape"])

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored values, flat, in its storage dtype (BF16: uint16 bits)."""
        header, data = self._file(name)
        entry = header[name]
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in STORAGE:
            raise ConfigError(f"unsupported tensor dtype {entry['dtype']} in the checkpoint ({name})")
        return data[begin:end].view(STORAGE[entry["dtype"]])

    def float32(self, name: str) -> np.ndarray:
        """The tensor as flat float32 (exact for F32, F16 and BF16)."""
        values = to_float32(self.raw(name), self.dtype(name))
        return values if values.flags.aligned else values.copy()  # a tensor at an odd offset


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return raw
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values stored as ``dtype``, rounded as torch's ``.to(dtype)`` rounds them (to
    nearest, ties to even). A NaN stays a NaN (bfloat16: 0x7FC0; torch's vector kernels write
    other NaN bits)."""
    if dtype == "F32":
        return values
    if dtype == "BF16":
        bits = values.view(np.uint32)
        out = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
        out[np.isnan(values)] = 0x7FC0
        return out
    with np.errstate(over="ignore"):  # beyond float16's range: inf, as torch gives
        return values.astype(STORAGE[dtype])


class ShardWriter:
    """One safetensors file whose header (names, dtypes, shapes) is known in advance.

    Every tensor's place in the file follows from the header, so tensors can be written in any
    order and from several threads at once (``os.pwrite``): a worker writes what it merged
    as soon as it is done and keeps nothing waiting for the tensors before it.
    """

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        spans: dict[str, tuple[int, int]] = {}
        for name, dtype, shape in entries:
            nbytes = numel(shape) * itemsize(dtype)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            spans[name] = (offset, nbytes)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        start = 8 + len(blob)
        self.path = path
        self.spans = {name: (start + at, nbytes) for name, (at, nbytes) in spans.items()}
        self.unwritten = set(self.spans)
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, len(blob).to_bytes(8, "little") + blob, 0)

    def write(self, name: str, values: np.ndarray) -> None:
        """Write a tensor's bytes (a contiguous array in its storage dtype)."""
        at, nbytes = self.spans[name]
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        if data.nbytes != nbytes:
            raise RuntimeError(f"tensor {name} has {data.nbytes} bytes, the header says {nbytes}")
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            view = view[os.pwrite(self.fd, view, at + len(data) - len(view)):]
        with self.lock:
            self.unwritten.discard(name)

    def close(self) -> None:
        os.close(self.fd)
        if self.unwritten:  # only after an error elsewhere: do not leave a file that looks whole
            self.path.unlink(missing_ok=True)


def shards(entries: list[tuple[str, str, tuple[int, ...]]], max_bytes: int) -> list[list]:
    """Cut the tensor list into consecutive shards of at most ``max_bytes`` (one tensor may exceed)."""
    out: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = numel(entry[2]) * itemsize(entry[1])
        if out[-1] and size + nbytes > max_bytes:
            out.append([])
            size = 0
        out[-1].append(entry)
        size += nbytes
    return out


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` / ``500MB`` / ``1GiB`` / an integer."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ConfigError(f"max shard size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot read the size {size!r}; write e.g. 5GB, 500MB or 1GiB")
    number, prefix, binary = match.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if value < 1:
        raise ConfigError(f"max shard size must be positive, got {size!r}")
    return value
