"""A backward for frozen quantized projections, so LoRA can train over them (QLoRA).

The int8/int4 products run in kernels autograd cannot follow (and `mm(out=)` into a preallocated
output, which it refuses). Their weights never train, so the only gradient needed is the one
w.r.t. the input: `grad_in = grad_out @ W`, with W dequantized for the backward and dropped after.
Inference never reaches this: it applies only when autograd follows the input.
"""

from __future__ import annotations

import torch
from torch import nn


class _FrozenProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer
        return layer(x)  # grad mode is off in here: the layer's own (inference) path

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w = ctx.layer.dequantize().to(grad_out.dtype)  # (out, in), float, for this call only
        return grad_out @ w, None


def needs_backward(x: torch.Tensor) -> bool:
    """Whether autograd follows `x` through this product (a fine-tuning forward)."""
    return torch.is_grad_enabled() and x.requires_grad


def frozen_product(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` with a backward to `x` (the weights stay frozen: no gradient for them)."""
    return _FrozenProduct.apply(x, layer)
