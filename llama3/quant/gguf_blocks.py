"""Vectorised PyTorch dequantization of llama.cpp GGUF tensor blocks.

Owns the byte layout of each supported `ggml_type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q2_K..Q6_K) and turns raw block bytes into float tensors. Every decoder works on a whole
`(n_blocks, type_size)` uint8 tensor at once, on whatever device the bytes live.

Why the small helpers (`_q4_k_scales_mins`, `_q3_k_scales`, `_unpack`, `_f16_field`, ...): later
speed work will run matmuls straight on the blocks without dequantizing whole tensors, and needs the
same per-type unpacking of scales, mins and codes, so that logic lives in reusable functions.

Shape: gguf.GGUFReader's `ReaderTensor.shape` is in ggml order (ne[0], the contiguous dim, first),
so the PyTorch shape to pass here is `tuple(reversed(tensor.shape.tolist()))`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import CheckpointError

QK_K = 256  # elements per super-block of the k-quants

_T = GGMLQuantizationType
_FLOAT_TYPES: dict[int, torch.dtype] = {
    _T.F32: torch.float32,
    _T.F16: torch.float16,
    _T.BF16: torch.bfloat16,
}

# Decoded elements per chunk: bounds the float32 intermediates to a few tens of MiB for big tensors.
_CHUNK_ELEMENTS = 1 << 22


def type_name(ggml_type: int) -> str:
    """The llama.cpp name of a ggml type id ("Q4_K"), or "type <id>" for an id gguf does not know."""
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def block_layout(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block) of a supported type."""
    _check_supported(ggml_type)
    return _LAYOUTS[ggml_type]


# --- small reusable unpacking helpers ---------------------------------------------------------


def _f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian f16 at byte `offset` of every block, as float32 of shape (n, 1)."""
    # .contiguous() copies just 2 bytes a block; it makes the dtype view legal for any row stride.
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16).float()


def _unpack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Split each byte of `q` (..., k) into 8 // bits fields: (..., 8 // bits, k), lowest bits first."""
    # Scalar shifts on a contiguous copy: torch's broadcast and strided uint8 kernels are ~10x slower.
    q = q.contiguous()
    mask = (1 << bits) - 1
    return torch.stack([(q >> s) & mask for s in range(0, 8, bits)], dim=-2)


def _le_bits(q: torch.Tensor) -> torch.Tensor:
    """Bits of little-endian bytes (n, k) in bit order (n, 8 * k): bit j is bit j % 8 of byte j // 8."""
    return _unpack(q, 1).transpose(-1, -2).reshape(q.shape[0], -1)


def _nibble_codes(qs: torch.Tensor) -> torch.Tensor:
    """Q4_0/Q4_1/Q5_x packed nibbles (n, 16) -> codes (n, 32): low nibbles are elements 0..15."""
    return _unpack(qs, 4).reshape(qs.shape[0], -1)


def _q3_k_scales(scales: torch.Tensor) -> torch.Tensor:
    """Q3_K's 12 packed bytes -> 16 signed 6-bit sub-block scales (n, 16) as int16 in [-32, 31].

    Bytes 0..7 hold the low nibbles (scale k in byte k % 8, high nibble for k >= 8); bytes 8..11
    hold the top 2 bits (scale k in byte 8 + k % 4, bit pair k // 4).
    """
    n = scales.shape[0]
    low = _unpack(scales[:, :8], 4).reshape(n, 16)
    high = _unpack(scales[:, 8:12], 2).reshape(n, 16)
    return (low | (high << 4)).to(torch.int16) - 32


def _q4_k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 packed bytes -> 8 unsigned 6-bit scales and 8 mins, each (n, 8) uint8.

    Sub-blocks 0..3 keep their 6 bits in bytes 0..3 (scale) and 4..7 (min); sub-blocks 4..7 keep the
    low 4 bits in the nibbles of bytes 8..11 and the top 2 bits in the spare bits 6..7 of bytes 0..7.
    """
    s = scales.reshape(-1, 3, 4)
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)], dim=-1)
    mn = torch.cat([b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k_codes(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K packed nibbles (n, 128) -> (n, 8, 32): each 32-byte chunk gives two sub-blocks."""
    return _unpack(qs.reshape(-1, 4, 32), 4).reshape(-1, 8, 32)


def _q2_k_codes(qs: torch.Tensor) -> torch.Tensor:
    """Q2_K/Q3_K 2-bit fields (n, 64) -> (n, 256): each 32-byte half yields 4 runs of 32 elements."""
    return _unpack(qs.reshape(-1, 2, 32), 2).reshape(qs.shape[0], QK_K)


def _q6_k_codes(ql: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
    """Q6_K low nibbles (n, 128) and high bit pairs (n, 64) -> signed codes (n, 256) in [-32, 31]."""
    n = ql.shape[0]
    low = _unpack(ql.reshape(n, 2, 64), 4).reshape(n, QK_K)
    high = _unpack(qh.reshape(n, 2, 32), 2).reshape(n, QK_K)
    return (low | (high << 4)).to(torch.int16) - 32


# --- per-type decoders: uint8 (n, type_size) -> float32 (n, block_size) -----------------------


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | qs: 32 x int8
    return blocks[:, 2:].contiguous().view(torch.int8).float().mul_(_f16_field(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | qs: 16 bytes of nibbles, value = d * (q - 8)
    return _nibble_codes(blocks[:, 2:18]).float().sub_(8).mul_(_f16_field(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | m: f16 | qs: 16 bytes of nibbles, value = d * q + m
    q = _nibble_codes(blocks[:, 4:20]).float()
    return q.mul_(_f16_field(blocks, 0)).add_(_f16_field(blocks, 2))


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | qh: 32 fifth bits (u32 LE) | qs: 16 bytes of nibbles, value = d * (q - 16)
    q = _nibble_codes(blocks[:, 6:22]) | (_le_bits(blocks[:, 2:6]) << 4)
    return q.float().sub_(16).mul_(_f16_field(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | m: f16 | qh: 32 fifth bits (u32 LE) | qs: 16 bytes of nibbles, value = d * q + m
    q = _nibble_codes(blocks[:, 8:24]) | (_le_bits(blocks[:, 4:8]) << 4)
    return q.float().mul_(_f16_field(blocks, 0)).add_(_f16_field(blocks, 2))


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    # scales: 16 x (min << 4 | scale) | qs: 64 bytes of 2-bit codes | d: f16 | dmin: f16
    n = blocks.shape[0]
    scales = blocks[:, :16].contiguous()
    dl = (_f16_field(blocks, 80) * (scales & 0x0F).float()).unsqueeze(-1)
    ml = (_f16_field(blocks, 82) * (scales >> 4).float()).unsqueeze(-1)
    q = _q2_k_codes(blocks[:, 16:80]).reshape(n, 16, 16).float()
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    # hmask: 32 bytes (third bit) | qs: 64 bytes of 2-bit codes | scales: 12 bytes | d: f16
    n = blocks.shape[0]
    # A *clear* hmask bit subtracts 4: codes run from -4 to 3.
    high = _unpack(blocks[:, :32], 1).reshape(n, QK_K)
    q = _q2_k_codes(blocks[:, 32:96]).to(torch.int16) - ((high ^ 1) << 2).to(torch.int16)
    dl = _f16_field(blocks, 108) * _q3_k_scales(blocks[:, 96:108].contiguous()).float()
    return q.reshape(n, 16, 16).float().mul_(dl.unsqueeze(-1)).reshape(n, QK_K)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | dmin: f16 | scales: 12 bytes (8 scales + 8 mins, 6 bits) | qs: 128 bytes of nibbles
    n = blocks.shape[0]
    sc, mn = _q4_k_scales_mins(blocks[:, 4:16].contiguous())
    d = (_f16_field(blocks, 0) * sc.float()).unsqueeze(-1)
    dm = (_f16_field(blocks, 2) * mn.float()).unsqueeze(-1)
    q = _q4_k_codes(blocks[:, 16:144]).float()
    return q.mul_(d).sub_(dm).reshape(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    # d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes (fifth bit) | qs: 128 bytes of nibbles
    n = blocks.shape[0]
    sc, mn = _q4_k_scales_mins(blocks[:, 4:16].contiguous())
    d = (_f16_field(blocks, 0) * sc.float()).unsqueeze(-1)
    dm = (_f16_field(blocks, 2) * mn.float()).unsqueeze(-1)
    # Bit b of qh byte i is the fifth bit of element i of sub-block b.
    q = _q4_k_codes(blocks[:, 48:176]) | (_unpack(blocks[:, 16:48], 1) << 4)
    return q.float().mul_(d).sub_(dm).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    # ql: 128 bytes of nibbles | qh: 64 bytes of 2-bit pairs | scales: 16 x int8 | d: f16
    n = blocks.shape[0]
    scales = blocks[:, 192:208].contiguous().view(torch.int8)
    d = (_f16_field(blocks, 208) * scales.float()).unsqueeze(-1)
    q = _q6_k_codes(blocks[:, :128], blocks[:, 128:192]).reshape(n, 16, 16).float()
    return q.mul_(d).reshape(n, QK_K)


_DECODERS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    _T.Q8_0: _q8_0,
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q2_K: _q2_k,
    _T.Q3_K: _q3_k,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}

SUPPORTED_TYPES: frozenset[int] = frozenset(int(t) for t in (*_FLOAT_TYPES, *_DECODERS))
_LAYOUTS: dict[int, tuple[int, int]] = {t: GGML_QUANT_SIZES[_T(t)] for t in SUPPORTED_TYPES}
_SUPPORTED_NAMES = ", ".join(type_name(t) for t in sorted(SUPPORTED_TYPES))


def _check_supported(ggml_type: int) -> None:
    if ggml_type not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"GGUF tensor type {type_name(ggml_type)} is not supported",
            hint=f"re-quantize the model to one of: {_SUPPORTED_NAMES}",
        )


def _as_flat_tensor(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over `raw`'s memory, without copying when `raw` is contiguous."""
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1)
    arr = np.asarray(raw)  # an np.memmap slice becomes a plain view of the mapped pages
    with warnings.catch_warnings():
        # GGUFReader maps files read-only; we only ever read the view, so the warning is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr).reshape(-1)


def dequantize(
    raw: np.ndarray | torch.Tensor,
    ggml_type: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode GGUF tensor data into a new tensor of PyTorch (row-major) `shape` and `dtype`.

    `raw` is the tensor's bytes (any shape; a uint8 array or the typed F32/F16 array GGUFReader
    gives) as numpy or torch; the result lives on the same device as a torch `raw`.
    """
    _check_supported(ggml_type)
    block_size, type_size = _LAYOUTS[ggml_type]
    shape = tuple(int(s) for s in shape)
    n_elements = math.prod(shape)
    if (shape[-1] if shape else 1) % block_size:
        raise CheckpointError(
            f"a {type_name(ggml_type)} tensor of shape {shape} does not split into "
            f"{block_size}-element blocks along its last dimension",
            hint="the GGUF file is corrupt or its tensor shape is misread",
        )
    flat = _as_flat_tensor(raw)
    n_bytes = n_elements // block_size * type_size
    if flat.numel() * flat.element_size() != n_bytes:
        raise CheckpointError(
            f"a {type_name(ggml_type)} tensor of shape {shape} needs {n_bytes} bytes but "
            f"{flat.numel() * flat.element_size()} were given",
            hint="the GGUF file is truncated or corrupt; download it again",
        )

    if ggml_type in _FLOAT_TYPES:
        src = _FLOAT_TYPES[ggml_type]
        if flat.dtype != src:
            flat = flat.contiguous().view(torch.uint8).view(src)
        # copy=True: never hand out a tensor aliasing a (read-only) memory map.
        return flat.to(dtype=dtype, copy=True).reshape(shape)

    if flat.dtype != torch.uint8:
        flat = flat.contiguous().view(torch.uint8)
    blocks = flat.reshape(-1, type_size)
    decode = _DECODERS[ggml_type]
    step = max(1, _CHUNK_ELEMENTS // block_size)
    if blocks.shape[0] <= step:
        return decode(blocks).to(dtype).reshape(shape)
    out = torch.empty(blocks.shape[0], block_size, dtype=dtype, device=blocks.device)
    for start in range(0, blocks.shape[0], step):
        # Chunks keep the float32 temporaries small; each chunk is still fully vectorised.
        out[start : start + step] = decode(blocks[start : start + step])
    return out.reshape(shape)
