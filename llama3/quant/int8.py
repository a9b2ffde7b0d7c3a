"""Int8 weights run as int8 on CPU: per-output-channel symmetric int8 weights.

Two product paths, the same weights:
- the native kernel (llama3.kernels, built on first use on x86 with AVX2): each activation row on
  its own int16 grid times the int8 weights, int32 sums; error ~3e-5 relative to the float product
  with the int8 weights, and the fastest path measured here at every batch size (BENCHMARKS.md).
- fbgemm's int8 GEMM (where the kernel cannot be built): fbgemm quantizes its input to 7 bits per
  call (AVX2's 16-bit pair sums must not saturate); alone that costs SmolLM2-135M 5 % perplexity.
  Each row x (a token) is scaled to max |x| = 1 and split into x = hi + lo * STEP / 2, where hi lies
  exactly on fbgemm's grid and lo (the rounding residual, rescaled to [-1, 1]) is quantized again,
  so the product reads the weights once for both digits and the activation error drops from 2^-7
  to 2^-14 of the row's range. An anchor row [1, -1, 0, …] pins every call's range to [-1, 1].
On both paths a row's result never depends on the rest of the batch. On CPUs with AMX, products
of 64 rows or more (prompt chunks) take a third path instead: the codes and activations in
bfloat16 through oneDNN's tiles (`bf16_rows`; ~2x the prefill, bfloat16's rounding).

On a GPU a one-row product (batch-1 decoding) is a Triton kernel that streams the int8 codes
(`kernels.gpu_int8`); other products are the float product with the codes cast to the
activations' dtype, then scaled (`dequantized_product`).
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..kernels import gpu_int8
from . import bf16_rows
from .backward import frozen_product, needs_backward

#: fbgemm's grid for an input pinned to [-1, 1] at 7 bits: step 2/127, zero point 64. The high
#: digit keeps to +-63 steps (-64 would lie below -1 and move the call's range, hence its grid).
STEP = 2.0 / 127
_DIGIT = 63

#: fbgemm's packed weights, by key. torch.compile cannot trace the packed-weight object itself, so
#: compiled graphs call `llama3::int8_linear` with the key, a plain int.
_PACKED: dict[int, tuple[torch.ScriptObject, int]] = {}
_KEYS = itertools.count()


# Defined with `torch.library.Library` rather than `custom_op`: its Python dispatch costs ~4 us a
# call instead of ~20, and a decode step makes four such calls per layer.
_LIB = torch.library.Library("llama3", "DEF")
_LIB.define("int8_linear(Tensor x, int key) -> Tensor")


def _int8_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    """fbgemm's int8 product of `x` (rows, in) with the packed weights registered under `key`."""
    return torch.ops.quantized.linear_dynamic(x, _PACKED[key][0], True)


def _int8_linear_shape(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], _PACKED[key][1])


_LIB.impl("int8_linear", _int8_linear, "CPU")
_LIB._register_fake("int8_linear", _int8_linear_shape)


#: rows quantized at a time: the float temporaries stay a few MB even for a 128k-row output head
#: (whole, they were two to three copies of it: +190 MB of peak RSS loading SmolLM2's tied head)
_ROW_CHUNK = 2048


def dequantized_product(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (codes * scale[:, None]).T in x's dtype, written so a compiler fuses the decoding of the
    codes into the product (no float copy of the weights).

    A single row (a decode step) on a GPU with Triton is `kernels.gpu_int8`'s kernel, eager or
    compiled; without Triton, compiled, it is an explicit reduction over float32 codes made by
    integer operations (`codes_as_float`), which the compiler fuses into one kernel per product.
    """
    if x.numel() == x.shape[-1] and gpu_int8.available(x):
        return gpu_int8.row_product(x, codes, scale)
    if torch.compiler.is_compiling() and x.numel() == x.shape[-1]:
        y = (x.reshape(1, -1).float() * codes_as_float(codes)).sum(-1) * scale
        return y.to(x.dtype).reshape(*x.shape[:-1], codes.shape[0])
    return F.linear(x, codes.to(x.dtype)) * scale.to(x.dtype)


#: 2**23 + 128: the float32 whose low mantissa bits hold a code offset by 128
_MAGIC = 8388736.0


def codes_as_float(codes: torch.Tensor) -> torch.Tensor:
    """The int8 codes as exact float32 values, made with integer operations and one subtraction:
    the float whose bits are 0x4B000000 | (code + 128) is 2**23 + code + 128. GPUs convert
    integers to floats at a quarter of their arithmetic rate; on an H200 this made the int8 w2
    product's kernel 37 % faster than a plain cast (the whole step ~3 %: BENCHMARKS.md)."""
    bits = (codes.to(torch.int32) + 128) | 0x4B000000
    return bits.view(torch.float32) - _MAGIC


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, float32 scale per row): symmetric, w ~= codes * scale[:, None]."""
    w = weight.detach()
    codes = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for lo in range(0, w.shape[0], _ROW_CHUNK):
        part = w[lo : lo + _ROW_CHUNK].float()
        s = (part.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        codes[lo : lo + _ROW_CHUNK] = torch.round(part / s[:, None]).clamp(-127, 127)
        scale[lo : lo + _ROW_CHUNK] = s
    return codes, scale


class Int8Linear(bf16_rows.PromptProducts, nn.Module):
    """A bias-free linear layer holding int8 weights with one float scale per output row."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2 or scale.shape != codes.shape[:1]:
            raise ValueError("Int8Linear takes int8 codes (out, in) and one scale per row")
        self.out_features, self.in_features = codes.shape
        self._key: int | None = None
        on_cpu = codes.device.type == "cpu"
        if not on_cpu or (self.in_features % 32 == 0 and kernels.available()):
            # Non-persistent: they follow .to() but checkpoints save `tensors()` explicitly.
            self.register_buffer("codes", codes.contiguous(), persistent=False)
            self.register_buffer("scale", scale.float().contiguous(), persistent=False)
            return
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # PyTorch marks quantized-tensor constructors deprecated; the fbgemm kernels behind
            # them are what we use, and the warning would otherwise reach users at every load.
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(codes, scale.double(), zero, 0)
            packed = torch.ops.quantized.linear_prepack(qw, None)
        self._key = next(_KEYS)
        _PACKED[self._key] = (packed, self.out_features)
        weakref.finalize(self, _PACKED.pop, self._key, None)
        self._anchor = torch.zeros(1, self.in_features)
        self._anchor[0, 0], self._anchor[0, -1] = 1.0, -1.0

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        return cls(*quantize_rows(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_backward(x):  # fine-tuning over frozen int8 weights (QLoRA)
            return frozen_product(self, x)
        if self._key is None and self.codes.device.type != "cpu":
            return dequantized_product(x, self.codes, self.scale)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if self._key is not None:
            y = self._fbgemm(x2)
        elif bf16_rows.applies(x2):  # a prompt chunk on a CPU with AMX (kernels loaded: _key None)
            y = bf16_rows.product(x2, self.out_features, *self._prompt_rows())
        else:
            y = torch.ops.llama3_kernels.int8_mm(x2.contiguous(), self.codes, self.scale)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _prompt_rows(self):
        if self._key is not None or self.codes.device.type != "cpu" or not kernels.available():
            return None
        # codes straight to bfloat16 (exact), in one native pass
        return (lambda s, e: torch.ops.llama3_kernels.int8_rows_bf16(self.codes[s:e])), self.scale

    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        n = x2.shape[0]
        s = x2.abs().amax(dim=1, keepdim=True) + 1e-30
        xs = x2 / s
        hi = torch.round(xs * (1 / STEP)).clamp_(-_DIGIT, _DIGIT) * STEP
        lo = ((xs - hi) * (2 / STEP)).clamp_(-1.0, 1.0)
        y = torch.ops.llama3.int8_linear(torch.cat([hi, lo, self._anchor]), self._key)
        return torch.addcmul(y[:n], y[n : 2 * n], torch.tensor(STEP / 2)) * s

    def tensors(self) -> dict[str, torch.Tensor]:
        """The int8 codes and row scales, to save a checkpoint."""
        if self._key is None:
            return {"codes": self.codes, "scale": self.scale}
        qw, _ = torch.ops.quantized.linear_unpack(_PACKED[self._key][0])  # fbgemm's layout
        return {"codes": qw.int_repr(), "scale": qw.q_per_channel_scales().float()}

    def dequantize(self) -> torch.Tensor:
        t = self.tensors()
        # one pass (the int8 -> float32 promotion inside the product), not a cast then a product:
        # the same values; QLoRA's backward takes this once per frozen product and step
        return torch.mul(t["codes"], t["scale"][:, None])

    def weight_nbytes(self) -> int:
        """Bytes a product reads: the int8 weights and a float32 scale per row."""
        return self.out_features * (self.in_features + 4)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Token embeddings as int8 rows with one float32 scale each; a lookup dequantizes the rows
    it reads. With a tied head these are the int8 output projection's own tensors, so the table
    is held once (as float32 beside the int8 head it was a second, four times larger copy:
    113 MB of SmolLM2-135M's memory, 2.1 GB of an 8B model's untied table, quartered)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        if codes.dtype != torch.int8 or codes.dim() != 2 or scale.shape != codes.shape[:1]:
            raise ValueError("Int8Embedding takes int8 codes (vocab, dim) and one scale per row")
        self.num_embeddings, self.embedding_dim = codes.shape
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("scale", scale.float(), persistent=False)
        self.out_dtype = dtype

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Embedding:
        return cls(*quantize_rows(weight), dtype=weight.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.codes[tokens].float() * self.scale[tokens].unsqueeze(-1)
        return rows if rows.dtype == self.out_dtype else rows.to(self.out_dtype)

    def dequantize(self) -> torch.Tensor:
        return (self.codes.float() * self.scale[:, None]).to(self.out_dtype)

    def weight_nbytes(self) -> int:
        """Bytes a token reads: one row (counted as nothing, like a float embedding's)."""
        return 0

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"
