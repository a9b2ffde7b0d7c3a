"""The checkpoint being converted, as the writers need it: the project's reader's view plus what
a conversion must settle first (the stored dtype, Llama 3.1 RoPE scaling for GGUF sources, the
tensor order, and which files back the tensors)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import LoadedCheckpoint, read_checkpoint
from ..config import ModelArgs, RopeScaling
from ..errors import CheckpointError, UnsupportedFormatError
from ..model.rope import inverse_frequencies

log = logging.getLogger(__name__)

_GGML_FLOAT = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml F32, F16, BF16
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_LAYER_ORDER = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
)


@dataclass
class Source:
    ckpt: LoadedCheckpoint
    #: the architecture, with Llama 3.1 scaling recovered from a GGUF's rope_freqs
    args: ModelArgs
    #: the float dtype the weights are stored in; None for GGUF block-quantized weights
    dtype: torch.dtype | None
    #: Meta names in the order they are written
    names: list[str]
    #: the files whose mappings back the tensors (their pages are dropped after each tensor)
    mapped_files: list[Path]
    #: set when a GGUF's rope_freqs encode no Llama 3.1 scaling: only a GGUF can keep them
    rope_error: CheckpointError | None = None

    @property
    def path(self) -> Path:
        return self.ckpt.path


def open_source(path: str | os.PathLike) -> Source:
    """Read `path` with the project's reader and settle what every writer needs."""
    ckpt = read_checkpoint(path)
    if ckpt.quantization is not None:
        raise UnsupportedFormatError(
            f"{ckpt.path} is a `llama3 quantize` checkpoint ({ckpt.quantization.name}); its "
            "int8/int4 codes are not converted back to float weights",
            "convert the float checkpoint it was quantized from",
        )
    args, rope_error = ckpt.args, None
    if ckpt.rope_freq_factors is not None and args.rope_scaling is None:
        try:
            args = args.replace(
                use_scaled_rope=True, rope_scaling=_scaling_from_factors(ckpt, args)
            )
        except CheckpointError as e:
            rope_error = e
    mapped = [f for f in ckpt.files if f.suffix in (".pth", ".safetensors", ".gguf")]
    # A Meta source keeps its own order (a Meta -> Meta copy is then byte for byte the same
    # state dict); the others get the order of Meta's module (tok_embeddings, layers, norm, output).
    names = list(ckpt.tensors) if ckpt.format == "meta" else _ordered(ckpt.tensors)
    return Source(ckpt, args, _stored_dtype(ckpt), names, mapped, rope_error)


def _ordered(tensors: dict) -> list[str]:
    def key(name: str) -> tuple:
        m = re.match(r"layers\.(\d+)\.(.+)$", name)
        if m:
            rest = m.group(2)
            return (1, int(m.group(1)), _LAYER_ORDER.index(rest) if rest in _LAYER_ORDER else 99)
        return (
            {"tok_embeddings.weight": 0, "norm.weight": 2, "output.weight": 3}.get(name, 4),
            0,
            0,
        )

    return sorted(tensors, key=key)


def _stored_dtype(ckpt: LoadedCheckpoint) -> torch.dtype | None:
    """The dtype of the stored weights, read from the files' own headers (nothing is loaded)."""
    if ckpt.format == "gguf":
        types = {
            s.ggml_type
            for s in ckpt.tensors.values()
            if len(s.shape) == 2 and s.ggml_type is not None
        }
        return _GGML_FLOAT.get(types.pop()) if len(types) == 1 else None
    if ckpt.format == "meta":
        shard = next(f for f in ckpt.files if f.suffix == ".pth")
        sd = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
        dtypes = {t.dtype for t in sd.values() if t.dim() == 2}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32
    if ckpt.format == "hf":
        from safetensors import safe_open

        dtypes = set()
        for f in ckpt.files:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as h:
                    dtypes |= {h.get_slice(k).get_dtype() for k in h.keys()}
        found = {_SAFETENSORS_DTYPES.get(d) for d in dtypes}
        return found.pop() if len(found) == 1 and None not in found else torch.float32
    return None


def _scaling_from_factors(ckpt: LoadedCheckpoint, args: ModelArgs) -> RopeScaling:
    """The Llama 3.1 scaling a GGUF's per-frequency divisors (`rope_freqs.weight`) encode.

    llama.cpp stores only the divisors; the largest is the scaling factor, and the published
    models all use low/high frequency factors 1 and 4 over an 8192-token original context. The
    divisors are checked against that, so a file that encodes anything else is refused.
    """
    factors = ckpt.rope_freq_factors.float().reshape(-1)
    candidate = RopeScaling(factor=float(factors.max()))
    base = inverse_frequencies(args.head_dim, args.rope_theta)
    scaled = inverse_frequencies(args.head_dim, args.rope_theta, candidate)
    if factors.numel() != base.numel() or not torch.allclose(
        base / scaled, factors, rtol=1e-4, atol=1e-6
    ):
        raise CheckpointError(
            f"{ckpt.path.name}: rope_freqs.weight is not Llama 3.1 frequency scaling "
            "(factor, low 1, high 4, original context 8192)",
            "only GGUF targets can keep these frequencies: convert with --to gguf",
        )
    return candidate
