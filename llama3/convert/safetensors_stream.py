"""A safetensors file written one tensor at a time.

`safetensors.torch.save_file` needs every tensor of a file in memory at once (and copies each to
bytes), so a 5 GB shard would cost 10 GB. The format is an 8-byte header length, a JSON header of
names, dtypes, shapes and byte offsets, then the raw little-endian data; with every shape and
dtype known up front, the header is written first and each tensor's bytes follow as it is made.
The result is read back with the `safetensors` library in the tests.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class SafetensorsStream:
    """Write `entries` in order: open, `write(name, tensor)` for each, then `close()`."""

    def __init__(self, path: Path, entries: Sequence[Entry], metadata: dict[str, str]) -> None:
        self.path = path
        self._pending = list(entries)
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        for e in entries:
            header[e.name] = {
                "dtype": _DTYPE_NAMES[e.dtype],
                "shape": list(e.shape),
                "data_offsets": [offset, offset + e.nbytes],
            }
            offset += e.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        self._f: BinaryIO = open(path, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        e = self._pending.pop(0)
        if e.name != name or tuple(tensor.shape) != e.shape or tensor.dtype != e.dtype:
            raise AssertionError(f"{name} {tuple(tensor.shape)} {tensor.dtype} out of plan ({e})")
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._f.write(memoryview(data))

    def close(self) -> None:
        if self._pending:
            raise AssertionError(f"{len(self._pending)} tensors never written to {self.path}")
        self._f.close()

    def abort(self) -> None:
        self._f.close()
