"""LoRA modules: the low-rank pair (`LoRA`) and the wrappers that add it to a frozen projection.

`LoRALinear` wraps one projection (a float `Linear`, or an int8/int4 layer). `LoRAFused` wraps a
quantizer's fused product (`wqkv` = q|k|v rows, `w13` = w1|w3 rows): the base stays one fused
product, and each adapted projection's update is added to its slice of the output. Un-fusing
would double the quantized products' calls and weights' reads; slices cost one `cat`.

The base is never written to: its parameters keep `requires_grad=False`, and quantized layers
give autograd an input gradient only (`quant.backward`). A wrapper exposes none of the base's
tensors as its own, so the native decode path (which reads `codes`/`packed` from a projection)
sees it as a module to call, and the adapter is never skipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRA(nn.Module):
    """delta(x) = dropout(x) @ A.T @ B.T * scale, A (r, in), B (out, r): PEFT's lora_A/lora_B.

    Initialised as PEFT does (A Kaiming-uniform, B zero), so a fresh adapter changes nothing. The
    matrices are float32 whatever the base's dtype."""

    def __init__(
        self, in_features: int, out_features: int, r: int, scale: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.r, self.scale = r, scale
        self.A = nn.Parameter(torch.empty(r, in_features, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(out_features, r, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.A.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.A.dtype))
        return F.linear(F.linear(x, self.A), self.B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A (out, in): what merging adds to the base weight."""
        return (self.B @ self.A) * self.scale

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scale={self.scale:g}"


class LoRALinear(nn.Module):
    """A frozen projection plus one LoRA update."""

    def __init__(self, base: nn.Module, lora: LoRA) -> None:
        super().__init__()
        self.base, self.lora = base, lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.lora(x).to(y.dtype)

    def adapters(self) -> dict[str, LoRA]:
        return {"": self.lora}


class LoRAFused(nn.Module):
    """A frozen fused product whose output slices `sizes` (projection name -> rows, in order)
    get the updates of the projections in `loras` (the others pass through)."""

    def __init__(self, base: nn.Module, sizes: dict[str, int]) -> None:
        super().__init__()
        self.base = base
        self.sizes = dict(sizes)
        self.loras = nn.ModuleDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        parts = y.split(list(self.sizes.values()), dim=-1)
        return torch.cat(
            [
                p + self.loras[n](x).to(p.dtype) if n in self.loras else p
                for n, p in zip(self.sizes, parts)
            ],
            dim=-1,
        )

    def adapters(self) -> dict[str, LoRA]:
        return dict(self.loras.items())
