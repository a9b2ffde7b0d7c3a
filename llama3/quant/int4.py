"""Int4 weights that stay 4-bit in memory: group-wise asymmetric codes, dequantized per call.

`w[o, i] = code[o, i] * scale[o, i // group] + zero[o, i // group]`, codes 0..15 packed two to a
byte in the plain layout (element 2j in the low nibble of byte j, 2j+1 in the high nibble), with
float32 scales and zeros: 6 bits a weight at group 32. GGUF's Q4_0, Q4_1 and Q4_K are exactly this
at group 32 (`Int4Linear.from_gguf` keeps their bits; no requantization).

Products run in the native kernel (llama3.kernels: the nibbles times int16 activations; in the
AVX2 build at group 32 with LLAMA3_INT4_Q8=1, int8 per 32-block: `kernels.int4_q8`) whatever their
row count: ~10x the path below for one row, 1.3-2.5x at 48-512 rows (2 cores, AVX-512 VNNI and
AVX2 alike), and each row's result is computed alone, so a request's
tokens never depend on how many other rows its batch holds (a serving step's row count is an
accident of batching). Machines without the kernel (and GPUs) dequantize a slab of rows at a time
(small enough to stay in cache) and hand it to the float GEMM; on CPUs with AMX a prompt chunk
of 64 rows or more outside a serving step takes the bfloat16 GEMM (`bf16_rows`). PyTorch's own
`_weight_int4pack_mm_for_cpu` is vectorised on x86 for bfloat16 only; with float32 activations it
runs a scalar loop, measured slower than both. The plain layout is the only copy: `tensors()`
returns it as is, and nothing float outlives a call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from .. import kernels
from ..errors import CheckpointError, InvalidRequestError
from . import bf16_rows
from .backward import frozen_product, needs_backward
from .gguf_blocks import _as_flat_tensor, _f16_field, _q4_k_scales_mins, block_layout, type_name

GROUPS = (32, 64, 128)

#: weights dequantized per slab in forward: 2M floats = 8 MiB, which the GEMM reads back from L3.
#: Measured on 2 AVX2 cores: 1 MiB slabs pay ~0.1 ms of op overhead each, 16 MiB ones miss L3, and
#: a whole 49152x576 head at once is 4x slower (it streams 113 MiB through DRAM twice).
_SLAB_ELEMENTS = 1 << 21

#: GGUF blocks repacked per step at load: bounds the temporaries for vocabulary-sized tensors
_GGUF_CHUNK_BLOCKS = 1 << 16

_T = GGMLQuantizationType
_GGUF_TYPES = (_T.Q4_0, _T.Q4_1, _T.Q4_K)


def _check_group(group: int, in_features: int) -> None:
    if group not in GROUPS:
        raise InvalidRequestError(
            f"int4 group size {group} is not supported",
            f"use one of: {', '.join(map(str, GROUPS))}",
            "group",
        )
    if in_features % group:
        fits = [str(g) for g in GROUPS if in_features % g == 0]
        raise InvalidRequestError(
            f"in_features {in_features} is not a multiple of the int4 group size {group}",
            f"use group {' or '.join(fits)}"
            if fits
            else f"keep this layer in float: int4 needs in_features divisible by {GROUPS[0]}",
            "group",
        )


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., 2k) in 0..15 -> plain-layout bytes (..., k)."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _halves_to_plain(qs: torch.Tensor) -> torch.Tensor:
    """GGUF nibbles (..., m) -- low nibbles are elements 0..m-1, high nibbles m..2m-1 -- to the
    plain layout (..., m), without unpacking to codes: plain byte j of each half takes the nibble
    pair of source bytes 2j and 2j+1."""
    even, odd = qs[..., 0::2], qs[..., 1::2]
    low = (even & 0x0F) | (odd << 4)
    high = (even >> 4) | (odd & 0xF0)
    return torch.cat([low, high], dim=-1)


class Int4Linear(bf16_rows.PromptProducts, nn.Module):
    """Bias-free linear layer with int4 weights:
    w[o, i] = code[o, i] * scale[o, i // group] + zero[o, i // group], code in 0..15."""

    def __init__(
        self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int
    ) -> None:
        """`packed`: uint8 (out, in // 2) in the plain layout; `scale`, `zero`: float32
        (out, in // group). The tensors are kept, not copied."""
        super().__init__()
        if packed.dtype != torch.uint8 or packed.dim() != 2:
            raise CheckpointError(
                f"int4 codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}",
                "the checkpoint is corrupt or was not written by Int4Linear.tensors()",
            )
        out_features, in_features = packed.shape[0], packed.shape[1] * 2
        _check_group(group, in_features)
        groups = (out_features, in_features // group)
        for name, t in (("scale", scale), ("zero", zero)):
            if tuple(t.shape) != groups or not t.is_floating_point():
                raise CheckpointError(
                    f"int4 {name} must be float of shape {groups} for codes of shape "
                    f"{tuple(packed.shape)} and group {group}, got {t.dtype} {tuple(t.shape)}",
                    "the checkpoint is corrupt or was not written by Int4Linear.tensors()",
                )
        self.in_features, self.out_features, self.group = in_features, out_features, group
        # Non-persistent buffers: they follow .to(device) but stay out of the model's state_dict;
        # checkpoints save `tensors()` explicitly.
        self.register_buffer("packed", packed.contiguous(), persistent=False)
        self.register_buffer("scale", scale.to(torch.float32).contiguous(), persistent=False)
        self.register_buffer("zero", zero.to(torch.float32).contiguous(), persistent=False)
        # decided once, not per call: a compiled graph cannot trace the kernels' loader
        self._native = kernels.available()

    @classmethod
    def from_float(cls, weight: torch.Tensor, group: int = 32) -> Int4Linear:
        """Quantize `weight` (out, in): each run of `group` input channels maps its own
        [min, max] onto codes 0..15 (round to nearest: error at most half a step)."""
        w = weight.detach()
        out_features, in_features = w.shape
        _check_group(group, in_features)
        n_groups = in_features // group
        packed = torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=w.device)
        scale = torch.empty(out_features, n_groups, dtype=torch.float32, device=w.device)
        zero = torch.empty_like(scale)
        step = max(1, (1 << 22) // in_features)  # rows per pass: a few float temporaries of 16 MiB
        for s in range(0, out_features, step):
            wg = w[s : s + step].to(torch.float32).reshape(-1, n_groups, group)
            lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
            sc = (hi - lo) / 15
            # A constant group gets scale 0: every code 0, and zero reproduces it exactly.
            div = torch.where(sc > 0, sc, torch.ones_like(sc))
            codes = ((wg - lo[..., None]) / div[..., None]).round_().clamp_(0, 15)
            packed[s : s + step] = _pack(codes.to(torch.uint8).reshape(wg.shape[0], -1))
            scale[s : s + step], zero[s : s + step] = sc, lo
        return cls(packed, scale, zero, group)

    @classmethod
    def from_gguf(
        cls, raw: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, int]
    ) -> Int4Linear | None:
        """The GGUF tensor `raw` (its block bytes) of PyTorch shape (out, in) as an exact int4
        layer, or None when `ggml_type` is not Q4_0, Q4_1 or Q4_K.

        Each 32-element (sub-)block becomes one group: Q4_0 `d * (c - 8)` is scale d, zero -8d;
        Q4_1 `d * c + m` is scale d, zero m; Q4_K `d * sc * c - dmin * m` is scale d * sc, zero
        -dmin * m. Those products are exact in float32, so `dequantize()` equals
        `gguf_blocks.dequantize` bit for bit.
        """
        if ggml_type not in _GGUF_TYPES:
            return None
        block_size, type_size = block_layout(ggml_type)
        out_features, in_features = (int(s) for s in shape)
        flat = _as_flat_tensor(raw)
        if flat.dtype != torch.uint8:
            flat = flat.contiguous().view(torch.uint8)
        n_bytes = out_features * in_features // block_size * type_size
        if in_features % block_size or flat.numel() != n_bytes:
            raise CheckpointError(
                f"a {type_name(ggml_type)} tensor of shape {(out_features, in_features)} needs "
                f"rows of whole {block_size}-element blocks ({n_bytes} bytes) but {flat.numel()} "
                "bytes were given",
                "the GGUF file is truncated or corrupt; download it again",
            )
        blocks = flat.reshape(-1, type_size)
        per_block = block_size // 32  # groups (32-element sub-blocks) per block
        packed = torch.empty(blocks.shape[0], 16 * per_block, dtype=torch.uint8, device=flat.device)
        scale = torch.empty(blocks.shape[0], per_block, dtype=torch.float32, device=flat.device)
        zero = torch.empty_like(scale)
        for s in range(0, blocks.shape[0], _GGUF_CHUNK_BLOCKS):
            b = blocks[s : s + _GGUF_CHUNK_BLOCKS]
            e = s + b.shape[0]
            if ggml_type == _T.Q4_0:  # d: f16 | qs: 16 bytes
                d = _f16_field(b, 0)
                packed[s:e] = _halves_to_plain(b[:, 2:18])
                scale[s:e], zero[s:e] = d, d * -8
            elif ggml_type == _T.Q4_1:  # d: f16 | m: f16 | qs: 16 bytes
                packed[s:e] = _halves_to_plain(b[:, 4:20])
                scale[s:e], zero[s:e] = _f16_field(b, 0), _f16_field(b, 2)
            else:  # Q4_K: d: f16 | dmin: f16 | 12 bytes of 6-bit scales, mins | qs: 128 bytes
                sc, mn = _q4_k_scales_mins(b[:, 4:16].contiguous())
                # Each 32 bytes of qs hold two sub-blocks: low nibbles, then high nibbles.
                packed[s:e] = _halves_to_plain(b[:, 16:144].reshape(-1, 4, 32)).reshape(-1, 128)
                scale[s:e] = _f16_field(b, 0) * sc.float()
                zero[s:e] = -(_f16_field(b, 2) * mn.float())
        return cls(
            packed.reshape(out_features, in_features // 2),
            scale.reshape(out_features, -1),
            zero.reshape(out_features, -1),
            32,
        )

    def _dequantize_rows(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Write the float32 weights of rows start..stop into `out` (at least the rows' size)."""
        p = self.packed[start:stop]
        rows = p.shape[0]
        w = out.view(-1)[: rows * self.in_features].view(rows, self.in_features // 2, 2)
        # Measured fastest in eager PyTorch: two nibble masks copied into the interleaved float
        # slab, then the group affine in place (a 256-entry lookup table is ~2x slower).
        w[..., 0] = p & 0x0F
        w[..., 1] = p >> 4
        g = w.view(rows, -1, self.group)
        g.mul_(self.scale[start:stop, :, None]).add_(self.zero[start:stop, :, None])
        return w.view(rows, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 weights (out, in)."""
        out = torch.empty(self.out_features, self.in_features, device=self.packed.device)
        step = self._slab_rows()
        for s in range(0, self.out_features, step):
            self._dequantize_rows(s, s + step, out[s : s + step])
        return out

    def _slab_rows(self) -> int:
        return max(1, _SLAB_ELEMENTS // self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out). For inference: weights wider than one slab are multiplied
        into slices of a preallocated output (`mm(out=)`), which autograd refuses: under
        autograd (QLoRA) the product runs as a frozen layer with an input gradient."""
        if needs_backward(x):
            return frozen_product(self, x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        step = self._slab_rows()
        if bf16_rows.applies(x2):  # a prompt chunk on a CPU with AMX, outside a serving step
            y = bf16_rows.product(x2, self.out_features, self._bf16_rows)
        elif x2.device.type == "cpu" and self._native:
            y = torch.ops.llama3_kernels.int4_mm(
                x2.contiguous(), self.packed, self.scale, self.zero, self.group
            )
        elif step >= self.out_features:
            y = F.linear(x2, self._dequantize_rows(0, self.out_features, self._slab(step)))
        else:
            y = torch.empty(x2.shape[0], self.out_features, device=x2.device)
            slab = self._slab(step)
            for s in range(0, self.out_features, step):
                w = self._dequantize_rows(s, s + step, slab)
                # A column slice of y is a valid BLAS output (row stride out_features): no copy.
                torch.mm(x2, w.t(), out=y[:, s : s + w.shape[0]])
        y = y.reshape(*shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _prompt_rows(self):
        return (self._bf16_rows, None) if self._native else None

    def _bf16_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop as bfloat16 (prompt products): dequantized straight to it by the
        native kernel (4.5x the eager path's speed, the same values), else through float32."""
        if self._native:
            return torch.ops.llama3_kernels.int4_rows_bf16(
                self.packed[start:stop], self.scale[start:stop], self.zero[start:stop], self.group
            )
        return self._dequantize_rows(start, stop, self._slab(stop - start))

    def _slab(self, rows: int) -> torch.Tensor:
        rows = min(rows, self.out_features)
        return torch.empty(rows, self.in_features, device=self.packed.device)

    def weight_nbytes(self) -> int:
        """Bytes a product reads: the packed codes and a float32 scale and zero per group."""
        return self.packed.numel() + 4 * (self.scale.numel() + self.zero.numel())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The layer's own tensors for a checkpoint (not copies): `codes` uint8 (out, in // 2) in
        the plain layout, `scale` and `zero` float32 (out, in // group).
        `Int4Linear(t["codes"], t["scale"], t["zero"], group)` rebuilds the same layer."""
        return {"codes": self.packed, "scale": self.scale, "zero": self.zero}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 group={self.group}"
        )
