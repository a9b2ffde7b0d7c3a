"""One entry point for every checkpoint format: detect it, read it, return a `LoadedCheckpoint`.

Formats: Meta's native directory (params.json + consolidated.NN.pth), a Hugging Face directory
(config.json + safetensors), a llama.cpp GGUF file, and a directory written by `llama3 quantize`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, UnsupportedFormatError
from .gguf_file import is_gguf_file, read_gguf_checkpoint
from .hf_safetensors import is_hf_dir, read_hf_checkpoint
from .loaded import Format, LoadedCheckpoint, TensorSource
from .meta_pth import is_meta_dir, read_meta_checkpoint
from .quantized import is_quantized_dir, read_quantized_checkpoint

__all__ = ["Format", "LoadedCheckpoint", "TensorSource", "detect_format", "read_checkpoint"]


def detect_format(path: str | os.PathLike) -> tuple[Format, Path]:
    """The format of `path` and the exact path to read (a directory may hold a single GGUF file)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such file or directory: {p}", "check the model path")
    if p.is_file():
        if is_gguf_file(p):
            return "gguf", p
        if p.suffix == ".gguf":
            raise CheckpointError(
                f"{p} does not start with the GGUF magic bytes",
                "the file is corrupt or not a GGUF file",
            )
        if p.name == "params.json" or p.suffix == ".pth":
            return detect_format(p.parent)
        if p.name == "config.json" or p.suffix == ".safetensors":
            return detect_format(p.parent)
        raise UnsupportedFormatError(
            f"{p} is not a model file this engine can read",
            "pass a .gguf file, a Meta checkpoint directory (params.json + consolidated.00.pth) "
            "or a Hugging Face directory (config.json + *.safetensors)",
        )
    if is_quantized_dir(p):
        return "quantized", p
    if is_hf_dir(p):
        return "hf", p
    if is_meta_dir(p):
        return "meta", p
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return detect_format(ggufs[0])
    if (p / "original" / "params.json").is_file():
        return "meta", p / "original"
    found = ", ".join(sorted(x.name for x in p.iterdir())[:8]) or "nothing"
    raise UnsupportedFormatError(
        f"{p} is not a checkpoint directory (found: {found})",
        "expected params.json + consolidated.00.pth (Meta), config.json + *.safetensors (Hugging Face)"
        + (f", or one .gguf file (found {len(ggufs)})" if ggufs else ", or a .gguf file"),
    )


def read_checkpoint(
    path: str | os.PathLike, *, prefer_shards: int | None = None
) -> LoadedCheckpoint:
    """Read `path`'s config and open its tensors lazily; `prefer_shards` picks AIME's
    `merged.{N}GPUs.*.pth` files of a Meta directory when a run has that many ranks."""
    fmt, p = detect_format(path)
    if fmt == "meta":
        return read_meta_checkpoint(p, prefer_shards)
    reader = {
        "meta": read_meta_checkpoint,
        "hf": read_hf_checkpoint,
        "gguf": read_gguf_checkpoint,
        "quantized": read_quantized_checkpoint,
    }[fmt]
    return reader(p)
