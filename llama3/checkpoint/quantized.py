"""Directories written by `llama3 quantize` (see llama3/quant/save.py): quantization.json +
model.safetensors + the tokenizer. Tensors stay memory-mapped until the builder reads them; the
quantized parts load in their stored dtypes (int8/uint8 codes, float32 scales)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import ModelArgs, RopeScaling
from ..errors import CheckpointError, ConfigError
from ..quant import PARTS
from .loaded import LoadedCheckpoint, TensorSource

FORMAT = "llama3-quantized"
VERSION = 1
CONFIG = "quantization.json"
WEIGHTS = "model.safetensors"


def is_quantized_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def _config(path: Path) -> dict[str, Any]:
    f = path / CONFIG
    try:
        cfg = json.loads(f.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f} is not valid JSON ({e})", "write the directory again") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ConfigError(
            f"{f} is not a llama3 quantized checkpoint",
            "write it with `llama3 quantize MODEL --to int8 --out DIR`",
        )
    if cfg.get("version") != VERSION:
        raise ConfigError(
            f"{f} has version {cfg.get('version')!r}; this llama3 reads version {VERSION}",
            "upgrade llama3, or quantize the original checkpoint again",
        )
    return cfg


def _args(cfg: dict[str, Any], where: Path) -> ModelArgs:
    raw = dict(cfg.get("args") or {})
    try:
        if raw.get("rope_scaling") is not None:
            raw["rope_scaling"] = RopeScaling(**raw["rope_scaling"])
        return ModelArgs(**raw)
    except TypeError as e:
        raise ConfigError(
            f"{where / CONFIG}: bad args ({e})", "write the directory again"
        ) from None


def read_quantized_checkpoint(path: Path) -> LoadedCheckpoint:
    from ..quant.apply import QuantSpec

    cfg = _config(path)
    spec = QuantSpec.parse(str(cfg.get("scheme")))
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing", "write the directory again")
    try:
        handle = safe_open(str(weights), framework="pt")
    except Exception as e:
        raise CheckpointError(f"cannot read {weights}: {e}", "write the directory again") from None

    def source(name: str) -> TensorSource:
        def load(dtype: torch.dtype) -> torch.Tensor:
            t = handle.get_tensor(name)
            keep = name.rsplit(".", 1)[-1] in PARTS
            return t if keep or not t.is_floating_point() else t.to(dtype)

        shape = tuple(handle.get_slice(name).get_shape())
        return TensorSource(shape, load, f"{weights.name}:{name}")

    tensors = {n: source(n) for n in handle.keys()}
    rope = tensors.pop("rope_freqs", None)
    tok = cfg.get("tokenizer") or {}
    metadata: dict[str, Any] = {"quantization": cfg}
    tokenizer_source: Path | None = None
    if tok.get("kind") == "gguf":  # the GGUF's vocabulary keys (the loader reads metadata)
        tokenizer_source = path / tok["file"]
        metadata.update(json.loads(tokenizer_source.read_text("utf-8")))
    elif tok.get("kind") == "tiktoken":
        tokenizer_source = path / tok["file"]
    elif tok.get("kind") == "hf":
        tokenizer_source = path
    return LoadedCheckpoint(
        format="quantized",
        path=path,
        args=_args(cfg, path),
        tensors=tensors,
        tokenizer_source=tokenizer_source,
        files=[weights],
        metadata=metadata,
        rope_freq_factors=rope.load(torch.float32) if rope is not None else None,
        generation_config=cfg.get("generation_config") or {},
        quantization=spec,
    )
