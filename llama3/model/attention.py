"""Scaled dot-product attention for queries that are the last positions of their keys.

Pure function shared by every cache layout: the contiguous cache (generate) and the paged pool
(engine) gather keys/values their own way, then call this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (b, n_heads, q_len, hd); k, v (b, n_kv_heads, kv_len, hd) with kv_len >= q_len.

    Query i sits at position kv_len - q_len + i and sees keys 0 .. that position. Grouped-query
    attention: query head j reads kv head j // (n_heads // n_kv_heads), as Meta's repeat_kv does.
    The output has q's dtype, except bfloat16 queries on a CPU with AMX tiles: those take
    `llama3_kernels::amx_attention` (keys and values rounded to bfloat16 as SDPA would) and give
    float32, which is what their callers convert to.
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    if q_len > 1 and kernels.amx_attention_applies(q, k, v):
        out = torch.ops.llama3_kernels.amx_attention(q, k, v, q.shape[-1] ** -0.5)
        return out.transpose(1, 2)  # (b, heads, q_len, hd) over (b, q_len, heads, hd) memory
    k, v = k.to(q.dtype), v.to(q.dtype)
    mask, causal = None, False
    if q_len > 1:
        if kv_len == q_len:
            causal = True
        else:
            kpos = torch.arange(kv_len, device=q.device)
            qpos = torch.arange(kv_len - q_len, kv_len, device=q.device)
            mask = kpos[None, :] <= qpos[:, None]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]
    )
