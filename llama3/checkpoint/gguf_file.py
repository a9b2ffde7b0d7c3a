"""llama.cpp GGUF files: metadata -> ModelArgs, tensors -> Meta names, dequantized on demand.

The `gguf` package memory-maps the file. Every tensor source keeps its raw block data and ggml type
(`TensorSource.raw` / `.ggml_type`) so quantized weights can later run without a float copy; the
default path dequantizes one tensor at a time into the target dtype. llama.cpp's converter stores
q/k in Meta's interleaved RoPE layout, so no permutation is needed here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelArgs
from ..errors import CheckpointError
from .loaded import LoadedCheckpoint, TensorSource
from .names import gguf_to_meta

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def open_gguf(path: Path) -> Any:
    import gguf

    try:
        # Copy-on-write mapping: same-dtype tensors become zero-copy writable torch views.
        return gguf.GGUFReader(str(path), "c")
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on bad files
        raise CheckpointError(
            f"cannot read GGUF file {path}: {type(e).__name__}: {e}",
            "the file is truncated or corrupt; download or convert it again",
        ) from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """The key/value metadata as plain Python values (strings decoded, arrays as lists)."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def read_gguf_checkpoint(path: Path) -> LoadedCheckpoint:
    from ..quant.gguf_blocks import SUPPORTED_TYPES, type_name

    reader = open_gguf(path)
    md = gguf_metadata(reader)
    tokens = md.get("tokenizer.ggml.tokens")
    args = ModelArgs.from_gguf_metadata(md, n_vocab=len(tokens) if tokens else None)
    tensors: dict[str, TensorSource] = {}
    freq_factors = None
    for t in reader.tensors:
        # GGUF lists dims innermost first (ne[0] = columns); PyTorch wants them outermost first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.name == "rope_freqs.weight":
            freq_factors = torch.from_numpy(t.data.astype("float32").reshape(-1).copy())
            continue
        name = gguf_to_meta(t.name)
        if name is None:
            raise CheckpointError(
                f"{path.name} holds an unexpected tensor '{t.name}'",
                "this is not a plain llama-architecture GGUF file",
            )
        qtype = int(t.tensor_type)
        if qtype not in SUPPORTED_TYPES:
            raise CheckpointError(
                f"{path.name}: tensor {t.name} has type {type_name(qtype)}, which is not supported",
                "re-quantize the model to F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or a K-quant (Q2_K-Q6_K)",
            )
        tensors[name] = TensorSource(
            shape,
            _loader(path, t, qtype, shape),
            f"{path.name}:{t.name}",
            ggml_type=qtype,
            raw=t.data,
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


_NATIVE = {0: torch.float32, 1: torch.float16}  # ggml F32 / F16 as numpy gives them


def _loader(path: Path, t: Any, qtype: int, shape: tuple[int, ...]):
    from ..quant.gguf_blocks import dequantize

    def load(dtype: torch.dtype) -> torch.Tensor:
        if _NATIVE.get(qtype) == dtype:
            return torch.from_numpy(t.data).view(shape)  # a view of the mapped file, no copy
        # A conversion reads the bytes with pread, so the source pages never stay mapped (and
        # resident) beside the converted tensor.
        buf = bytearray(int(t.n_bytes))
        with open(path, "rb") as f:
            got = os.preadv(f.fileno(), [buf], int(t.data_offset))
        if got != len(buf):
            raise CheckpointError(
                f"{path.name}: tensor {t.name} ends early",
                "the file is truncated; download it again",
            )
        return dequantize(np.frombuffer(buf, dtype=np.uint8), qtype, shape, dtype=dtype)

    return load
