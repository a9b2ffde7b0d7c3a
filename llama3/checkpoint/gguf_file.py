"""llama.cpp GGUF files: metadata -> ModelArgs, tensors -> Meta names, dequantized on demand.

The `gguf` package memory-maps the file. Every tensor source keeps its raw block data and ggml type
(`TensorSource.raw` / `.ggml_type`) so quantized weights can later run without a float copy; the
default path dequantizes one tensor at a time into the target dtype. llama.cpp's converter stores
q/k in Meta's interleaved RoPE layout, so no permutation is needed here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..config import ModelArgs
from ..errors import CheckpointError
from ..quant.gguf_blocks import dequantize
from .loaded import LoadedCheckpoint, TensorSource
from .names import gguf_to_meta

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_checkpoint(path: Path) -> LoadedCheckpoint:
    from ..quant.gguf_blocks import SUPPORTED_TYPES, block_layout, type_name
    from .gguf_header import read_gguf_header

    header = read_gguf_header(path)
    md = header.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    args = ModelArgs.from_gguf_metadata(md, n_vocab=len(tokens) if tokens else None)
    size = path.stat().st_size
    # One copy-on-write mapping of the whole file: same-dtype tensors become zero-copy views.
    data = np.memmap(path, dtype=np.uint8, mode="c") if header.tensors else None
    tensors: dict[str, TensorSource] = {}
    freq_factors = None
    for t in header.tensors:
        # GGUF lists dims innermost first (ne[0] = columns); PyTorch wants them outermost first.
        shape = tuple(reversed(t.ne))
        qtype = t.ggml_type
        if qtype not in SUPPORTED_TYPES:
            raise CheckpointError(
                f"{path.name}: tensor {t.name} has type {type_name(qtype)}, which is not supported",
                "re-quantize the model to F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or a K-quant (Q2_K-Q6_K)",
            )
        block, type_size = block_layout(qtype)
        n_bytes = math.prod(t.ne) // block * type_size
        if t.offset + n_bytes > size:
            raise CheckpointError(
                f"cannot read GGUF file {path}: tensor {t.name} ends at byte {t.offset + n_bytes} "
                f"but the file has {size} bytes",
                "the file is truncated or corrupt; download or convert it again",
            )
        raw = data[t.offset : t.offset + n_bytes]
        if t.name == "rope_freqs.weight":
            freq_factors = dequantize(raw, qtype, shape).reshape(-1)
            continue
        name = gguf_to_meta(t.name)
        if name is None:
            raise CheckpointError(
                f"{path.name} holds an unexpected tensor '{t.name}'",
                "this is not a plain llama-architecture GGUF file",
            )
        tensors[name] = TensorSource(
            shape,
            _loader(path, t.offset, raw, qtype, shape),
            f"{path.name}:{t.name}",
            ggml_type=qtype,
            raw=raw,
            read_raw=lambda offset=t.offset, n=n_bytes: _read(path, offset, n),
            narrow=_narrower(path, t.offset, raw, qtype, shape, f"{path.name}:{t.name}"),
        )
    if "output.weight" not in tensors:
        args = args.replace(tie_word_embeddings=True)
    return LoadedCheckpoint(
        format="gguf",
        path=path,
        args=args,
        tensors=tensors,
        tokenizer_source=path,
        files=[path],
        metadata=md,
        rope_freq_factors=freq_factors,
    )


_NATIVE = {0: (torch.float32, np.float32), 1: (torch.float16, np.float16)}  # ggml F32 / F16


def _loader(path: Path, offset: int, raw: np.ndarray, qtype: int, shape: tuple[int, ...]):
    def load(dtype: torch.dtype) -> torch.Tensor:
        native = _NATIVE.get(qtype)
        if native is not None and native[0] == dtype:
            return torch.from_numpy(raw.view(native[1])).view(shape)  # a view of the mapping
        # A conversion reads the bytes with pread, so the source pages never stay mapped (and
        # resident) beside the converted tensor.
        return dequantize(_read(path, offset, raw.nbytes), qtype, shape, dtype=dtype)

    return load


def _narrower(
    path: Path, offset: int, raw: np.ndarray, qtype: int, shape: tuple[int, ...], origin: str
):
    """`TensorSource.narrow` on the file's blocks (blocks run along a row): rows are a byte
    range of the file; columns are a byte range of every row, where they fall on block edges.
    The slice keeps its ggml type, so a quantizer can still take its blocks as they are."""
    from ..quant.gguf_blocks import block_layout

    if len(shape) != 2:
        return None
    rows, cols = shape
    block, type_size = block_layout(qtype)
    row_bytes = cols // block * type_size

    def narrow(dim: int, start: int, stop: int) -> TensorSource | None:
        if dim % 2 == 0:
            lo, n = offset + start * row_bytes, (stop - start) * row_bytes
            part = raw[start * row_bytes : stop * row_bytes]
            cut = (stop - start, cols)

            def read() -> np.ndarray:
                return _read(path, lo, n)
        else:
            if start % block or stop % block:
                return None
            c0, c1 = start // block * type_size, stop // block * type_size
            cut = (rows, stop - start)

            def read() -> np.ndarray:
                whole = _read(path, offset, raw.nbytes).reshape(rows, row_bytes)
                return np.ascontiguousarray(whole[:, c0:c1]).reshape(-1)

            part = None
        where = f"{origin}[{dim}:{start}:{stop}]"

        def load(dtype: torch.dtype) -> torch.Tensor:
            native = _NATIVE.get(qtype)
            if part is not None and native is not None and native[0] == dtype:
                return torch.from_numpy(part.view(native[1])).view(cut)
            return dequantize(read(), qtype, cut, dtype=dtype)

        return TensorSource(cut, load, where, ggml_type=qtype, raw=part, read_raw=read)

    return narrow


def _read(path: Path, offset: int, nbytes: int) -> np.ndarray:
    """nbytes of the file from offset, read (not mapped) into a new uint8 array."""
    buf = bytearray(nbytes)
    with open(path, "rb") as f:
        got = os.preadv(f.fileno(), [buf], offset)
    if got != len(buf):
        raise CheckpointError(
            f"{path.name}: a tensor ends early", "the file is truncated; download it again"
        )
    return np.frombuffer(buf, dtype=np.uint8)
