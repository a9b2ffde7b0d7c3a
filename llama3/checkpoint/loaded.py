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
