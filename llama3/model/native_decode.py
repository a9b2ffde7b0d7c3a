"""Decode steps through the native CPU layer kernel (`llama3_kernels::decode_layer`).

One new token per row on a CPU model whose projections are int8 with the native kernel (what
`--quantize int8` and int8 checkpoints give), a float32 contiguous cache and one position for all
rows (`generate`, chat, the bench): each layer is one call — norm, fused q/k/v, RoPE, cache write,
attention, wo, norm, fused w1/w3, SiLU, w2 — instead of about nine operator calls, whose
dispatch was ~25 % of a step on a small model. Anything else takes the module path.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCache


def _native_int8(layer: object) -> bool:
    # Int8Linear holds `codes` exactly when it multiplies with the native kernel
    codes = getattr(layer, "codes", None)
    return isinstance(codes, torch.Tensor) and codes.device.type == "cpu"


def eligible(model: torch.nn.Module) -> bool:
    """Whether every layer of `model` can run as one native call (decided once per model)."""
    cached = getattr(model, "_native_decode", None)
    if cached is None:
        cached = _eligible(model)
        model._native_decode = cached
    return cached


def _eligible(model) -> bool:
    from .. import kernels

    emb = model.tok_embeddings.weight
    if emb.device.type != "cpu" or emb.dtype != torch.float32 or model.params.head_dim % 8:
        return False
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        if not all(_native_int8(m) for m in (att.wqkv, att.wo, ff.w13, ff.w2)):
            return False
        for norm in (layer.attention_norm, layer.ffn_norm):
            if norm.weight.dtype != torch.float32:
                return False
    return kernels.available()


def usable(model, cache: object, tokens: torch.Tensor) -> bool:
    """Whether this step (tokens (bsz, 1) into `cache`) takes the native path."""
    return (
        tokens.shape[1] == 1
        and isinstance(cache, KVCache)
        and cache.k[0].dtype == torch.float32
        and eligible(model)
    )


def decode(
    model, tokens: torch.Tensor, position: torch.Tensor, cache: KVCache, cos, sin
) -> torch.Tensor:
    """Hidden states (bsz, 1, dim) after every layer for `tokens` (bsz, 1) at `position` (1,)."""
    bsz = tokens.shape[0]
    h = model.tok_embeddings(tokens).reshape(bsz, -1)
    cos, sin = cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous()
    position = position.reshape(1)
    n_heads = model.params.n_heads
    op = torch.ops.llama3_kernels.decode_layer
    for i, layer in enumerate(model.layers):
        att, ff = layer.attention, layer.feed_forward
        h = op(
            h,
            layer.attention_norm.weight,
            layer.ffn_norm.weight,
            layer.attention_norm.eps,
            att.wqkv.codes,
            att.wqkv.scale,
            att.wo.codes,
            att.wo.scale,
            ff.w13.codes,
            ff.w13.scale,
            ff.w2.codes,
            ff.w2.scale,
            cos,
            sin,
            cache.k[i],
            cache.v[i],
            position,
            n_heads,
        )
    return h.unsqueeze(1)
