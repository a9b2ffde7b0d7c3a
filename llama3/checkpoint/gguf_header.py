"""The GGUF file header: key/value metadata and the tensor table, read with one small parser.

`read_gguf_header` returns the metadata and each tensor's name, type, shape and byte offset without
reading tensor data; the checkpoint reader maps the data, the tokenizer reads `tokenizer.*` keys.
Layout per ggml/include/gguf.h (versions 2 and 3, little- or big-endian). Truncated or foreign files
raise `CheckpointError` / `UnsupportedFormatError` naming the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointError, UnsupportedFormatError

GGUF_MAGIC = b"GGUF"

# GGUF value types (ggml/include/gguf.h): scalar type id -> struct format.
_SCALAR_FORMATS = {
    0: "B",  # uint8
    1: "b",  # int8
    2: "H",  # uint16
    3: "h",  # int16
    4: "I",  # uint32
    5: "i",  # int32
    6: "f",  # float32
    7: "?",  # bool
    10: "Q",  # uint64
    11: "q",  # int64
    12: "d",  # float64
}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Sequential reads from the KV section of a memory-mapped GGUF file."""

    def __init__(self, buf: mmap.mmap, order: str, path: Path) -> None:
        self.buf, self.order, self.pos, self.path = buf, order, 0, path

    def need(self, size: int) -> None:
        if self.pos + size > len(self.buf):
            raise CheckpointError(
                f"{self.path} is truncated (metadata ends early)",
                hint="the download is incomplete: fetch the file again",
            )

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            fmt = _SCALAR_FORMATS.get(item_type)
            if fmt is not None:  # numeric arrays (token types, scores) in one unpack
                size = struct.calcsize(fmt) * count
                self.need(size)
                values = struct.unpack_from(f"{self.order}{count}{fmt}", self.buf, self.pos)
                self.pos += size
                return list(values)
            return [self.value(item_type) for _ in range(count)]
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise CheckpointError(
                f"{self.path}: unknown GGUF value type {vtype} in the metadata",
                hint="the file is corrupt or from a newer GGUF version than this engine reads",
            )
        return self.unpack(fmt)


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    #: dims in ggml order (ne[0], the innermost, first)
    ne: tuple[int, ...]
    ggml_type: int
    #: absolute byte offset of the tensor's data in the file
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    byte_order: str


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Metadata and the tensor-info table of a GGUF file, without touching the tensor data.

    Well under a second even for a 128K vocabulary (`gguf.GGUFReader` takes many seconds to index
    every field). Metadata values equal `GGUFReader(path).fields[key].contents()`.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return _read_header(f, p)
    except FileNotFoundError:
        raise CheckpointError(f"GGUF file not found: {p}", hint="check the path") from None
    except IsADirectoryError:
        raise CheckpointError(
            f"{p} is a directory, not a GGUF file", hint="check the path"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {e.strerror}", hint="check the path") from None


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The key/value metadata of a GGUF file as Python values (strings decoded, arrays as lists)."""
    return read_gguf_header(path).metadata


def _read_header(f: BinaryIO, p: Path) -> GGUFHeader:
    if f.read(4) != GGUF_MAGIC:
        raise UnsupportedFormatError(
            f"{p} is not a GGUF file (no GGUF magic)",
            hint="pass a .gguf model, a Meta checkpoint directory or a Hugging Face directory",
        )
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        (version,) = struct.unpack_from("<I", buf, 4)
        # A version whose low half is zero was written on a big-endian machine.
        cur = _Cursor(buf, "<" if version & 0xFFFF else ">", p)
        cur.pos = 4
        version = cur.unpack("I")
        if version < 2:
            raise UnsupportedFormatError(
                f"{p} is GGUF version {version}; only versions 2 and 3 are supported",
                hint="convert it again with a current llama.cpp convert_hf_to_gguf.py",
            )
        n_tensors = cur.unpack("Q")
        kv_count = cur.unpack("Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cur.string()
            metadata[key] = cur.value(cur.unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("I")
            ne = tuple(cur.unpack("Q") for _ in range(n_dims))
            infos.append((name, ne, cur.unpack("I"), cur.unpack("Q")))
        align = int(metadata.get("general.alignment", 32))
        data_start = -(-cur.pos // align) * align
        tensors = [GGUFTensorInfo(n, ne, t, data_start + off) for n, ne, t, off in infos]
        return GGUFHeader(metadata, tensors, cur.order)
