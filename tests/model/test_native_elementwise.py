"""The native RMSNorm and RoPE (`llama3_kernels::rms_norm`, `rope`) against the formulas in
float64, and the modules' choice between them and the PyTorch versions."""

from __future__ import annotations

import pytest
import torch

from llama3 import kernels
from llama3.model.rope import apply_rope, inverse_frequencies, rope_cos_sin
from llama3.model.transformer import RMSNorm

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels unavailable")


def _norm64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def _rope64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's rotation of adjacent pairs as complex numbers, in float64."""
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    rot = torch.complex(cos.double(), sin.double())
    rot = rot[None, :, None, :] if rot.dim() == 2 else rot[:, :, None, :]
    return torch.view_as_real(xc * rot).flatten(-2)


@pytest.mark.parametrize("shape", [(3, 576), (2, 5, 100), (1, 64)])
def test_rms_norm_is_the_formula(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g)
    got = torch.ops.llama3_kernels.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(got.double(), _norm64(x, w, 1e-5), rtol=1e-6, atol=1e-6)
    norm = RMSNorm(shape[-1], eps=1e-5)
    norm.weight.data.copy_(w)
    with torch.no_grad():
        assert torch.equal(norm(x), got)  # the module takes it
    # autograd (the weight is a parameter) needs the PyTorch version, which agrees
    torch.testing.assert_close(norm(x), got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_dim, per_row", [(64, False), (128, True), (8, False)])
def test_rope_is_the_rotation(head_dim, per_row):
    g = torch.Generator().manual_seed(1)
    bsz, seqlen, heads = 2, 7, 5
    # q as a view of a fused q/k/v product: heads contiguous, positions strided
    fused = torch.randn(bsz, seqlen, (heads + 2) * head_dim, generator=g)
    x = fused[..., : heads * head_dim].unflatten(-1, (heads, head_dim))
    inv = inverse_frequencies(head_dim, 500000.0, None, None)
    pos = torch.arange(3, 3 + seqlen)
    cos, sin = rope_cos_sin(inv, torch.stack([pos, pos + 11]) if per_row else pos)
    got = torch.ops.llama3_kernels.rope(x, cos, sin)
    assert got.is_contiguous()
    torch.testing.assert_close(got.double(), _rope64(x, cos, sin), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(apply_rope(x, cos, sin), got)  # the model's function takes it
    fallback = apply_rope(x.clone().requires_grad_(True), cos, sin)  # (autograd: PyTorch's)
    torch.testing.assert_close(fallback, got, rtol=1e-6, atol=1e-6)
