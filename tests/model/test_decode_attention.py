"""The native decode attention (one query per row over a contiguous cache) against PyTorch's SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama3 import kernels


@pytest.mark.parametrize("rows, heads, kv_heads, head_dim", [(1, 9, 3, 64), (3, 4, 4, 128)])
def test_decode_attention_matches_sdpa(rows, heads, kv_heads, head_dim):
    assert kernels.available(), kernels.unavailable_reason()
    g = torch.Generator().manual_seed(0)
    seq = 300
    # q as the model hands it over: (rows, 1, heads, dim) transposed, not contiguous
    q = torch.randn(rows, 1, heads, head_dim, generator=g).transpose(1, 2)
    k = torch.randn(rows, kv_heads, seq, head_dim, generator=g)
    v = torch.randn(rows, kv_heads, seq, head_dim, generator=g)
    for pos in (0, 1, 137, seq - 1):
        got = torch.ops.llama3_kernels.decode_attention(
            q, k, v, torch.tensor([pos]), head_dim**-0.5
        )
        want = F.scaled_dot_product_attention(
            q, k[:, :, : pos + 1], v[:, :, : pos + 1], enable_gqa=True
        )
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_decode_attention_refuses_a_position_outside_the_cache():
    assert kernels.available(), kernels.unavailable_reason()
    q, k = torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        torch.ops.llama3_kernels.decode_attention(q, k, k, torch.tensor([4]), 1.0)


def test_paged_decode_attention_reads_each_rows_slots():
    assert kernels.available(), kernels.unavailable_reason()
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, head_dim, pool = 8, 2, 64, 500
    k = torch.randn(pool, kv_heads, head_dim, generator=g)
    v = torch.randn(pool, kv_heads, head_dim, generator=g)
    lengths = [1, 7, 130]  # scattered slots, as a block table gives them
    slots = [torch.randperm(pool, generator=g)[:n] for n in lengths]
    q = torch.randn(len(lengths), heads, head_dim, generator=g)
    padded = torch.nn.utils.rnn.pad_sequence(slots, batch_first=True)
    got = torch.ops.llama3_kernels.paged_decode_attention(
        q, k, v, padded, torch.tensor(lengths), head_dim**-0.5
    )
    for b, s in enumerate(slots):
        want = F.scaled_dot_product_attention(
            q[b, :, None], k[s].transpose(0, 1), v[s].transpose(0, 1), enable_gqa=True
        )[:, 0]
        torch.testing.assert_close(got[b], want, rtol=0, atol=2e-6)
    with pytest.raises(RuntimeError, match="slot outside the pool"):
        bad = padded.clone()
        bad[0, 0] = pool
        torch.ops.llama3_kernels.paged_decode_attention(q, k, v, bad, torch.tensor(lengths), 1.0)
