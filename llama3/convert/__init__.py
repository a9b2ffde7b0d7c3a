"""`llama3 convert`: any checkpoint this project reads -> Meta, Hugging Face or GGUF, streamed.

Sources are read only through `llama3.checkpoint.read_checkpoint` (Meta directories with any shard
count or AIME's merged names, Hugging Face directories, GGUF files) and tokenizers through
`llama3.loader.load_tokenizer_for`. Tensors are read, converted and written one at a time, so peak
memory is one output shard (Meta: torch.save needs a whole state dict) or one tensor (HF, GGUF).
Outputs are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .atomic import atomic_dir, atomic_file, check_new_output
from .options import DTYPE_NAMES, TORCH_DTYPES, ConvertOptions
from .source import Source, open_source
from .tokenizer_export import TokenizerExport

__all__ = ["ConvertOptions", "ConvertResult", "convert"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    source_format: str
    target: str
    dtype: str
    files: list[Path]
    seconds: float

    @property
    def nbytes(self) -> int:
        """The output's size on disk (every file, tokenizer and configs included)."""
        if self.out.is_file():
            return self.out.stat().st_size
        return sum(f.stat().st_size for f in self.out.iterdir() if f.is_file())


def _float_dtype(options: ConvertOptions, source: Source) -> torch.dtype:
    """--dtype, else the source's stored dtype; float32 for a block-quantized GGUF (exact)."""
    if options.dtype is not None:
        return TORCH_DTYPES[options.dtype]
    return source.dtype or torch.float32


def convert(
    src: str | os.PathLike,
    options: ConvertOptions,
    *,
    on_tensor: Callable[[str], None] | None = None,
    edit: Callable[[Source], None] | None = None,
) -> ConvertResult:
    """Convert `src` as `options` say; `on_tensor("FILE:TENSOR")` is called after each tensor is
    written (FILE: the output file it went to). `edit(source)` may replace tensor sources before
    anything is written (`llama3 merge` adds an adapter's updates this way)."""
    t0 = time.perf_counter()
    check_new_output(options.out)  # before reading anything
    source = open_source(src)
    if edit is not None:
        edit(source)
    if options.to == "meta":  # a shard count or params.json that can't work fails here, early
        from .meta_writer import check_meta

        check_meta(source, options.shards)
    elif options.to == "hf" and source.rope_error is not None:
        raise source.rope_error
    tokenizer = TokenizerExport.of(source.ckpt)
    tick = on_tensor or (lambda label: None)
    try:
        return _write(source, tokenizer, options, tick, t0)
    except OSError as e:  # disk full, permissions, ...: the temporary output is already gone
        raise CheckpointError(
            f"cannot write {options.out}: {e.strerror or e}",
            "check the free space and permissions where --out points; nothing was left there",
        ) from None


def _write(
    source: Source,
    tokenizer: TokenizerExport,
    options: ConvertOptions,
    tick: Callable[[str], None],
    t0: float,
) -> ConvertResult:
    if options.to == "gguf":
        with atomic_file(options.out) as tmp:
            from .gguf_writer import write_gguf

            write_gguf(
                source, tokenizer, tmp, options.dtype, lambda n: tick(f"{options.out.name}:{n}")
            )
        files = [options.out]
        dtype_name = options.dtype or (
            DTYPE_NAMES[source.dtype] if source.dtype is not None else "the source's types"
        )
    else:
        dtype = _float_dtype(options, source)
        with atomic_dir(options.out) as tmp:
            if options.to == "meta":
                from .meta_writer import write_meta

                written = write_meta(
                    source, tokenizer, tmp, dtype, options.shards, options.aime_names, tick
                )
            else:
                from .hf_writer import write_hf

                written = write_hf(source, tokenizer, tmp, dtype, options.max_shard_size, tick)
        files = [options.out / f.name for f in written]
        dtype_name = DTYPE_NAMES[dtype]
    return ConvertResult(
        options.out, source.ckpt.format, options.to, dtype_name, files, time.perf_counter() - t0
    )
