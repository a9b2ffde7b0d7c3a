"""What a conversion is asked to do: the target format, dtype, shard layout and output path,
parsed and checked once so the writers never see a bad value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import InvalidRequestError

Target = Literal["meta", "hf", "gguf"]
TARGETS: tuple[Target, ...] = ("meta", "hf", "gguf")

#: --dtype spellings -> canonical name
_DTYPE_ALIASES = {
    "f32": "f32",
    "float32": "f32",
    "fp32": "f32",
    "f16": "f16",
    "float16": "f16",
    "fp16": "f16",
    "half": "f16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "q8_0": "q8_0",
    "q8": "q8_0",
}
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' save_pretrained default ("5GB")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


@dataclass(frozen=True)
class ConvertOptions:
    to: Target
    out: Path
    #: canonical dtype name ("f32", "f16", "bf16", "q8_0"); None = the source's dtype
    dtype: str | None = None
    #: Meta output: the model-parallel world size
    shards: int = 1
    #: Meta output: AIME's `merged.{N}GPUs.{i:02d}.pth` names instead of `consolidated.NN.pth`
    aime_names: bool = False
    #: HF output: the largest safetensors file, in bytes
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE

    @classmethod
    def make(
        cls,
        to: str,
        out: str | Path,
        *,
        dtype: str | None = None,
        shards: int | None = None,
        aime_names: bool = False,
        max_shard_size: str | int | None = None,
    ) -> ConvertOptions:
        """Check every option against the target format; raise InvalidRequestError on bad ones."""
        target = to.lower()
        if target not in TARGETS:
            raise InvalidRequestError(
                f"unknown output format --to {to!r}",
                "use --to meta (consolidated.NN.pth), --to hf (safetensors) or --to gguf",
            )
        name = parse_dtype(dtype) if dtype is not None else None
        if name == "q8_0" and target != "gguf":
            raise InvalidRequestError(
                f"--dtype q8_0 is a GGUF block format; {target} checkpoints hold float tensors",
                "use --dtype f32, f16 or bf16 (or --to gguf for q8_0)",
            )
        if shards is not None and target != "meta":
            raise InvalidRequestError(
                f"--shards applies to Meta checkpoints, not --to {target}",
                "drop --shards, or use --to meta",
            )
        n = 1 if shards is None else int(shards)
        if n < 1:
            raise InvalidRequestError(
                f"--shards must be a positive number, got {n}", "use e.g. --shards 1, 2, 4 or 8"
            )
        if aime_names and target != "meta":
            raise InvalidRequestError(
                f"--aime-names applies to Meta checkpoints, not --to {target}",
                "drop --aime-names, or use --to meta",
            )
        if max_shard_size is not None and target != "hf":
            raise InvalidRequestError(
                f"--max-shard-size applies to Hugging Face checkpoints, not --to {target}",
                "drop --max-shard-size, or use --to hf",
            )
        size = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else parse_size(max_shard_size)
        out_path = Path(out).expanduser()
        if target == "gguf" and out_path.suffix != ".gguf":
            raise InvalidRequestError(
                f"--out {out_path} does not end in .gguf",
                "name the output file e.g. model.gguf (a GGUF checkpoint is one file)",
            )
        return cls(target, out_path, name, n, aime_names, size)  # type: ignore[arg-type]


def parse_dtype(text: str) -> str:
    name = _DTYPE_ALIASES.get(text.lower())
    if name is None:
        raise InvalidRequestError(
            f"unknown --dtype {text!r}", "use f32, f16, bf16, or q8_0 (GGUF only)"
        )
    return name


def parse_size(value: str | int) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes (transformers' max_shard_size spelling)."""
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", value.upper())
        if not m or m.group(2) not in _SIZE_UNITS:
            raise InvalidRequestError(
                f"cannot read --max-shard-size {value!r}",
                'give a size such as "5GB", "500MB" or "2GiB"',
            )
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if n <= 0:
        raise InvalidRequestError(
            f"--max-shard-size must be positive, got {value!r}", 'give a size such as "5GB"'
        )
    return n
