"""Rotary position embeddings as pure functions: base frequencies, Llama 3.1 scaling, application.

Meta's layout rotates *adjacent* pairs (x[2i], x[2i+1]); Hugging Face checkpoints permute the q/k rows
so their "rotate half" layout computes the same thing, and our loaders undo that permutation, so the
model only ever uses Meta's layout.
"""

from __future__ import annotations

import math

import torch

from .. import kernels
from ..config import RopeScaling


def inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None = None,
    freq_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair angular frequencies (float32, shape (head_dim // 2,))."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if freq_factors is not None:
        # GGUF files of Llama 3.1 store the scaling as per-frequency divisors (`rope_freqs.weight`).
        return freqs / freq_factors.float()
    if scaling is not None:
        freqs = apply_llama3_scaling(freqs, scaling)
    return freqs


def apply_llama3_scaling(freqs: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 frequency scaling: keep high frequencies, divide low ones by `factor`, blend between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * freqs / s.factor + smooth * freqs
    out = torch.where(wavelen > low_freq_wavelen, freqs / s.factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, out)


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for `positions` (any shape P): float32 tensors of shape P + (head_dim // 2,)."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of `x` (bsz, seqlen, n_heads, head_dim) in float32.

    `cos`/`sin` are (seqlen, head_dim // 2) or (bsz, seqlen, head_dim // 2).
    """
    if (  # one native pass where it applies (a float32 CPU prompt: ~10x faster)
        x.dim() == 4
        and x.shape[-1] % 8 == 0
        and x.stride(-1) == 1
        and x.stride(-2) == x.shape[-1]
        and cos.is_contiguous()
        and sin.is_contiguous()
        and cos.shape == sin.shape
        and cos.numel() in (x.shape[1] * x.shape[3] // 2, x.numel() // x.shape[2] // 2)
        and kernels.native_elementwise(x, cos, sin)
    ):
        return torch.ops.llama3_kernels.rope(x, cos, sin)
    xf = x.float().unflatten(-1, (-1, 2))  # (bsz, seqlen, n_heads, head_dim // 2, 2)
    x_re, x_im = xf[..., 0], xf[..., 1]
    if cos.dim() == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack((x_re * cos - x_im * sin, x_re * sin + x_im * cos), dim=-1)
    return out.flatten(-2).type_as(x)
