"""llama.cpp's GGUF layout through the `gguf` package's GGUFWriter: llama.cpp's tensor names and
metadata keys, the tokenizer in `tokenizer.ggml.*`, Llama 3.1 scaling as `rope_freqs.weight`.

GGUF keeps Meta's q/k row order (llama.cpp undoes HF's permutation), so tensors go in as they are.
The header and tensor table are written first (every shape and byte size is known up front), then
each tensor's data as it is made; norms stay F32 as llama.cpp keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.names import _GGUF_LAYER, _GGUF_TOP
from ..model.rope import inverse_frequencies
from .source import Source
from .stream import load_tensor, release
from .tokenizer_export import TokenizerExport

_META_TO_GGUF_LAYER = {v: k for k, v in _GGUF_LAYER.items()}
_META_TO_GGUF_TOP = {v: k for k, v in _GGUF_TOP.items()}
_F32, _F16, _Q8_0, _BF16 = 0, 1, 8, 30  # ggml types
_TYPE_OF = {"f32": _F32, "f16": _F16, "bf16": _BF16, "q8_0": _Q8_0}
_TYPE_OF_TORCH = {torch.float32: _F32, torch.float16: _F16, torch.bfloat16: _BF16}


def gguf_name(meta: str) -> str:
    if meta in _META_TO_GGUF_TOP:
        return _META_TO_GGUF_TOP[meta]
    _, i, rest = meta.split(".", 2)
    return f"blk.{i}.{_META_TO_GGUF_LAYER[rest]}"


@dataclass(frozen=True)
class _Planned:
    meta: str | None  # None: rope_freqs
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    raw: bool  # copy the source's blocks as they are

    @property
    def nbytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return math.prod(self.shape) // block * size


def _file_type(types: set[int]) -> int:
    from gguf import LlamaFileType

    weights = types - {_F32} or {_F32}  # norms are F32 in every file type
    if len(weights) != 1:
        return LlamaFileType.GUESSED
    return {
        _F32: LlamaFileType.ALL_F32,
        _F16: LlamaFileType.MOSTLY_F16,
        _BF16: LlamaFileType.MOSTLY_BF16,
        _Q8_0: LlamaFileType.MOSTLY_Q8_0,
    }.get(weights.pop(), LlamaFileType.GUESSED)


def _plan(source: Source, dtype: str | None) -> list[_Planned]:
    args = source.args
    plan = []
    freqs = _rope_factors(source)
    if freqs is not None:
        plan.append(_Planned(None, "rope_freqs.weight", tuple(freqs.shape), _F32, False))
    fallback = _TYPE_OF_TORCH.get(source.dtype, _F32)
    for name in source.names:
        if args.tie_word_embeddings and name == "output.weight":
            continue
        src = source.ckpt.tensors[name]
        shape = tuple(src.shape)
        if len(shape) == 1:
            t, raw = _F32, src.ggml_type == _F32
        elif dtype is None:  # the source's own type; a GGUF's blocks are copied as they are
            t = src.ggml_type if src.ggml_type is not None else fallback
            raw = src.ggml_type is not None and src.read_raw is not None
        else:
            t = _TYPE_OF[dtype]
            if t == _Q8_0 and shape[-1] % 32:
                t = _F16  # llama.cpp's fallback for rows that are not whole Q8_0 blocks
            raw = src.ggml_type == t and src.read_raw is not None
        plan.append(_Planned(name, gguf_name(name), shape, t, raw))
    return plan


def _rope_factors(source: Source) -> torch.Tensor | None:
    """llama.cpp's per-frequency divisors for Llama 3.1 scaling (base / scaled frequencies)."""
    if source.ckpt.rope_freq_factors is not None:
        return source.ckpt.rope_freq_factors.float().reshape(-1)
    a = source.args
    if a.rope_scaling is None:
        return None
    base = inverse_frequencies(a.head_dim, a.rope_theta)
    return base / inverse_frequencies(a.head_dim, a.rope_theta, a.rope_scaling)


def _data(source: Source, p: _Planned) -> np.ndarray:
    import gguf

    if p.meta is None:
        return _rope_factors(source).numpy().astype(np.float32)
    src = source.ckpt.tensors[p.meta]
    if p.raw:
        return np.asarray(src.read_raw(), dtype=np.uint8)
    if p.ggml_type == _F16:
        return load_tensor(source, p.meta, torch.float16).numpy()
    if p.ggml_type == _BF16:
        t = load_tensor(source, p.meta, torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint8)
    t = load_tensor(source, p.meta, torch.float32).numpy()
    if p.ggml_type == _F32:
        return t
    return gguf.quants.quantize(t, gguf.GGMLQuantizationType(p.ggml_type))


def write_gguf(
    source: Source,
    tokenizer: TokenizerExport,
    out: Path,
    dtype: str | None,
    on_tensor: Callable[[str], None],
) -> None:
    """Write the GGUF file `out` (a temporary name); `dtype` None keeps the source's types."""
    import gguf

    args = source.args
    plan = _plan(source, dtype)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(source.path.stem if source.path.is_file() else source.path.name)
    file_type = (
        source.ckpt.metadata.get("general.file_type") if source.ckpt.format == "gguf" else None
    )
    if dtype is not None or file_type is None:  # a block-for-block copy keeps the source's
        file_type = _file_type({p.ggml_type for p in plan})
    w.add_file_type(int(file_type))
    w.add_context_length(args.max_position_embeddings)
    w.add_embedding_length(args.dim)
    w.add_block_count(args.n_layers)
    w.add_feed_forward_length(args.hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_rope_dimension_count(args.head_dim)
    if args.head_dim != args.dim // args.n_heads:
        w.add_key_length(args.head_dim)
        w.add_value_length(args.head_dim)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_vocab_size(args.vocab_size)
    tokenizer.write_gguf(w)
    for p in plan:
        if p.ggml_type in (_F32, _F16):
            np_dtype = np.float32 if p.ggml_type == _F32 else np.float16
            w.add_tensor_info(p.name, p.shape, np.dtype(np_dtype), p.nbytes)
        else:  # block types are declared by their byte shape
            rows = math.prod(p.shape[:-1])
            w.add_tensor_info(
                p.name,
                (*p.shape[:-1], p.nbytes // max(rows, 1)),
                np.dtype(np.uint8),
                p.nbytes,
                raw_dtype=gguf.GGMLQuantizationType(p.ggml_type),
            )
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in plan:
            data = _data(source, p)
            w.write_tensor_data(data)
            del data
            release(source)
            on_tensor(p.name)
    finally:
        w.close()
