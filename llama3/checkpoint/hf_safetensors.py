"""Hugging Face Llama directories: config.json + model.safetensors or sharded safetensors with
model.safetensors.index.json (+ tokenizer.json, tokenizer_config.json, generation_config.json).

Names are mapped to Meta's and the q/k rows un-permuted, so the result equals Meta's layout.
safetensors maps the files; tensors are materialised one at a time by the model builder.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import ModelArgs
from ..errors import CheckpointError, ConfigError
from .loaded import LoadedCheckpoint, TensorSource
from .names import IGNORED_SUFFIXES, hf_to_meta, unpermute_hf_qk

INDEX = "model.safetensors.index.json"
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(f: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{f} is not valid JSON ({e})", f"restore {what} from the model repository"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{f} does not hold a JSON object", f"restore {what} from the model repository"
        )
    return data


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX
    if index.is_file():
        weight_map = _read_json(index, INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{index} has no weight_map", "restore the index file from the model repository"
            )
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{INDEX} lists {', '.join(missing)} but the file is missing in {path}",
                "download the missing shard(s) again",
            )
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")):
            raise CheckpointError(
                f"{path} holds PyTorch .bin weights, not safetensors",
                "convert them with transformers' save_pretrained(safe_serialization=True)",
            )
        raise CheckpointError(
            f"no model.safetensors found in {path}", "download the model's *.safetensors files"
        )
    return files


def read_hf_checkpoint(path: Path) -> LoadedCheckpoint:
    config = _read_json(path / "config.json", "config.json")
    args = ModelArgs.from_hf_config(config)
    files = _weight_files(path)
    tensors: dict[str, TensorSource] = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt")
            keys = list(handle.keys())
            header = _read_header(f)
        except Exception as e:  # safetensors raises SafetensorError on bad headers / short files
            raise CheckpointError(
                f"cannot read {f}: {e}",
                "the file is truncated or corrupt; download it again",
            ) from None
        for key in keys:
            name = hf_to_meta(key)
            if name is None:
                if key.endswith(IGNORED_SUFFIXES):
                    continue
                raise CheckpointError(
                    f"{f.name} holds an unexpected tensor '{key}'",
                    "this is not a plain LlamaForCausalLM checkpoint (adapters must be merged first)",
                )
            tensors[name] = _source(handle, header[key], f, key, name, args)
    if "output.weight" not in tensors and not args.tie_word_embeddings:
        # Llama 3.2 1B/3B configs say tie_word_embeddings; accept a missing lm_head either way.
        args = args.replace(tie_word_embeddings=True)
    if args.tie_word_embeddings:
        tensors.pop("output.weight", None)
    gen_file = path / "generation_config.json"
    generation_config = _read_json(gen_file, "generation_config.json") if gen_file.is_file() else {}
    has_tok = (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()
    original = path / "original" / "tokenizer.model"
    return LoadedCheckpoint(
        format="hf",
        path=path,
        args=args,
        tensors=tensors,
        tokenizer_source=path if has_tok else (original if original.is_file() else None),
        files=[path / "config.json", *files],
        metadata=config,
        generation_config=generation_config,
    )


def _read_header(f: Path) -> dict[str, Any]:
    """The safetensors JSON header: name -> {dtype, shape, data_offsets} (offsets after the header)."""
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    for info in header.values():
        if isinstance(info, dict) and "data_offsets" in info:
            info["data_offsets"] = [o + 8 + n for o in info["data_offsets"]]
    return header


def _pread(f: Path, info: dict[str, Any]) -> torch.Tensor:
    start, end = info["data_offsets"]
    fd = os.open(f, os.O_RDONLY)
    try:
        buf = bytearray(end - start)
        got = os.preadv(fd, [buf], start)
    finally:
        os.close(fd)
    if got != len(buf):
        raise CheckpointError(f"{f} ends early", "the file is truncated; download it again")
    return torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]).view(info["shape"])


def _source(
    handle: Any, info: dict[str, Any], f: Path, key: str, name: str, args: ModelArgs
) -> TensorSource:
    shape = tuple(info["shape"])
    stored = _ST_DTYPES.get(info["dtype"])
    heads = args.n_heads if name.endswith("attention.wq.weight") else args.kv_heads
    permuted = name.endswith(("attention.wq.weight", "attention.wk.weight"))

    def load(dtype: torch.dtype) -> torch.Tensor:
        # Same dtype: a zero-copy view of the memory-mapped file. A conversion reads the bytes with
        # pread instead, so the source pages never stay mapped beside the converted copy.
        t = handle.get_tensor(key) if stored in (dtype, None) else _pread(f, info)
        if permuted:
            t = unpermute_hf_qk(t, heads)
        return t.to(dtype)

    per_head = shape[0] // heads if permuted else 1

    def narrow(dim: int, start: int, stop: int) -> TensorSource | None:
        rows = dim % len(shape) == 0
        if permuted and rows and (start % per_head or stop % per_head):
            return None  # HF's permutation is within a head: only whole heads cut cleanly
        cut = list(shape)
        cut[dim] = stop - start

        def load_cut(dtype: torch.dtype) -> torch.Tensor:
            part = handle.get_slice(key)
            t = part[start:stop] if rows else part[..., start:stop]
            if permuted:
                t = unpermute_hf_qk(t, t.shape[0] // per_head if rows else heads)
            return t.to(dtype).contiguous()

        return TensorSource(tuple(cut), load_cut, f"{f.name}:{key}[{dim}:{start}:{stop}]")

    return TensorSource(shape, load, f"{f.name}:{key}", narrow=narrow)
