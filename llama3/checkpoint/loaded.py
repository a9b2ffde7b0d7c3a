"""What a checkpoint reader returns: the architecture, lazy tensor sources under Meta's names, and
where the tokenizer lives.

Tensors are not materialised by the readers. Each `TensorSource` knows its shape (so shapes are
checked against the config before a byte is converted) and how to produce the tensor in a target
dtype, one at a time, straight from the memory-mapped file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..config import ModelArgs

if TYPE_CHECKING:
    from ..quant.apply import QuantSpec

Format = Literal["meta", "hf", "gguf", "quantized"]


@dataclass
class TensorSource:
    shape: tuple[int, ...]
    load: Callable[[torch.dtype], torch.Tensor]
    #: the file (and tensor name there) it comes from, for error messages
    origin: str
    #: GGUF only: the ggml type and the raw (still quantized) block data, kept reachable so the
    #: speed work can run quantized weights without a float copy
    ggml_type: int | None = None
    raw: Any = None
    #: GGUF only: `raw`'s bytes read into memory of their own (a uint8 array), for code that
    #: repacks them: reading through the mapping would leave its pages resident beside the repacked
    #: copy for as long as any zero-copy view keeps the mapping open
    read_raw: Callable[[], Any] | None = None
    #: `narrow(dim, start, stop)`: a source of rows (dim 0) or columns (dim -1) start..stop that
    #: reads only those bytes where the format allows (tensor-parallel shards); None, or a
    #: `narrow` returning None, means "load the whole tensor and cut it" (`narrowed`)
    narrow: Callable[[int, int, int], TensorSource | None] | None = None


def read_bytes(src: TensorSource, dtype: torch.dtype) -> int:
    """What loading `src` reads, for progress bars: a GGUF tensor's block bytes, else its size in
    `dtype`."""
    nbytes = getattr(src.raw, "nbytes", None)
    if src.ggml_type is not None and isinstance(nbytes, int):
        return nbytes
    n = 1
    for d in src.shape:
        n *= d
    return n * dtype.itemsize


def narrowed(src: TensorSource, dim: int, start: int, stop: int) -> TensorSource:
    """`src` cut to [start, stop) along `dim` (0 or -1): the format's own reader when it has
    one, else the whole tensor loaded and cut (one tensor's transient memory, a copy kept)."""
    if (dim, start, stop) == (0, 0, src.shape[0]) or (
        dim == -1 and (start, stop) == (0, src.shape[-1])
    ):
        return src
    if src.narrow is not None:
        got = src.narrow(dim, start, stop)
        if got is not None:
            return got
    shape = list(src.shape)
    shape[dim] = stop - start

    def load(dtype: torch.dtype) -> torch.Tensor:
        return src.load(dtype).narrow(dim, start, stop - start).clone()

    return TensorSource(tuple(shape), load, f"{src.origin}[{dim}:{start}:{stop}]")


@dataclass
class LoadedCheckpoint:
    format: Format
    path: Path
    args: ModelArgs
    tensors: dict[str, TensorSource]
    #: where to build the tokenizer from (a tokenizer.model file, an HF directory, or the GGUF file)
    tokenizer_source: Path | None
    files: list[Path] = field(default_factory=list)
    #: raw metadata (params.json, config.json or GGUF key/values) for `inspect`
    metadata: dict[str, Any] = field(default_factory=dict)
    #: GGUF Llama 3.1 files store the RoPE scaling as per-frequency divisors
    rope_freq_factors: torch.Tensor | None = None
    #: generation_config.json contents (HF), used for the stop set and defaults
    generation_config: dict[str, Any] = field(default_factory=dict)
    #: set for checkpoints written by `llama3 quantize`: their projections are stored quantized
    quantization: QuantSpec | None = None

    @property
    def gguf_vocabulary(self) -> bool:
        """Whether the tokenizer (and chat template) come from GGUF metadata: a GGUF file, or a
        quantized directory written from one."""
        return self.format == "gguf" or bool(self.metadata.get("tokenizer.ggml.model"))
