"""Prompt attention on AMX tiles (`llama3_kernels::amx_attention`): causal attention to bfloat16's
rounding against a float64 reference, for every shape a model gives it, and taken by
`causal_attention` only for bfloat16 queries where it can run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama3 import kernels
from llama3.model.attention import causal_attention

pytestmark = pytest.mark.skipif(
    not kernels.has_amx(), reason="needs a CPU with AMX tiles and the kernels built for it"
)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 causal attention: query i at position Lk - Lq + i sees keys 0 .. that position."""
    lq, lk = q.shape[2], k.shape[2]
    mask = torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None]
    return F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True
    )


def inputs(b, h, kv, lq, lk, d, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g) * spread
    return q, torch.randn(b, kv, lk, d, generator=g), torch.randn(b, kv, lk, d, generator=g)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 9, 3, 512, 512, 64),  # SmolLM2's prompt
        (1, 9, 3, 37, 100, 64),  # a chunk after cached tokens; neither a multiple of 32
        (2, 8, 2, 70, 70, 128),  # batch 2, Llama 3 8B's head_dim
        (1, 6, 2, 200, 333, 64),
        (1, 4, 4, 1, 1, 64),  # one token, no grouping
        (1, 2, 1, 33, 33, 256),
    ],
)
def test_matches_float64_attention_to_bfloat16_rounding(shape):
    q, k, v = inputs(*shape)
    want = reference(q, k, v)
    out = torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, shape[-1] ** -0.5)
    assert out.dtype == torch.float32 and out.shape == (shape[0], shape[3], shape[1], shape[5])
    err = (out.transpose(1, 2).double() - want).abs().max().item()
    # q, k, v and the probabilities carry 8 significant bits, as in PyTorch's bfloat16 SDPA
    sdpa = F.scaled_dot_product_attention(
        q.bfloat16(),
        k.bfloat16(),
        v.bfloat16(),
        attn_mask=torch.arange(k.shape[2])[None, :]
        <= torch.arange(k.shape[2] - q.shape[2], k.shape[2])[:, None],
        enable_gqa=True,
    )
    assert err < 0.03 and err < 2 * (sdpa.double() - want).abs().max().item() + 1e-3


def test_a_query_never_sees_a_later_key():
    q, k, v = inputs(1, 2, 1, 40, 40, 64, seed=3)
    out = torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.125)
    v2 = v.clone()
    v2[:, :, 20:] = 1e4  # keys 20.. change: queries 0..19 must not move at all
    out2 = torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v2, 0.125)
    assert torch.equal(out[:, :20], out2[:, :20])
    assert not torch.equal(out[:, 20:], out2[:, 20:])


def test_large_scores_stay_finite_and_exact():
    q, k, v = inputs(1, 3, 3, 64, 64, 64, seed=4, spread=40.0)  # scores in the thousands
    out = torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.125).transpose(1, 2)
    assert torch.isfinite(out).all()
    # against the same bfloat16 inputs (at this scale their rounding moves scores by units)
    rounded = [t.bfloat16().float() for t in (q, k, v)]
    assert (out.double() - reference(*rounded)).abs().max().item() < 0.01


def test_strided_queries_and_bfloat16_keys_and_the_thread_count_change_nothing():
    q, k, v = inputs(1, 6, 2, 96, 96, 64, seed=5)
    qb = q.bfloat16().transpose(1, 2).contiguous().transpose(1, 2)  # the model's layout
    out = torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.125)
    assert torch.equal(torch.ops.llama3_kernels.amx_attention(qb, k, v, 0.125), out)
    # bfloat16 keys/values are what float32 ones round to
    same = torch.ops.llama3_kernels.amx_attention(qb, k.bfloat16(), v.bfloat16(), 0.125)
    assert torch.equal(same, out)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert torch.equal(torch.ops.llama3_kernels.amx_attention(qb, k, v, 0.125), out)
    finally:
        torch.set_num_threads(threads)


def test_causal_attention_takes_it_for_bfloat16_queries_only():
    q, k, v = inputs(1, 9, 3, 50, 80, 64, seed=6)
    native = causal_attention(q.bfloat16(), k, v)  # float32 out: the kernel ran
    assert native.dtype == torch.float32 and native.shape == q.shape
    assert (native.double() - reference(q, k, v)).abs().max().item() < 0.03
    assert causal_attention(q, k, v).dtype == torch.float32  # float32 queries: exact SDPA
    assert (causal_attention(q, k, v).double() - reference(q, k, v)).abs().max() < 1e-5
    odd = inputs(1, 2, 1, 8, 8, 96)  # head_dim 96: SDPA, in bfloat16
    assert causal_attention(odd[0].bfloat16(), *odd[1:]).dtype == torch.bfloat16
    grad = q.bfloat16().requires_grad_()  # fine-tuning: the op has no backward
    with torch.enable_grad():
        assert causal_attention(grad, k, v).requires_grad
        # an adapter on the values alone (q and k frozen) still gets its gradient
        vg = v.clone().requires_grad_()
        out = causal_attention(q.bfloat16(), k, vg)
        out.float().sum().backward()
        assert vg.grad is not None and vg.grad.abs().sum() > 0


def test_bad_input_is_a_clear_error():
    q, k, v = inputs(1, 2, 1, 8, 8, 96)
    with pytest.raises(RuntimeError, match="head_dim must be 64, 128, 192 or 256"):
        torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.1)
    q, k, v = inputs(1, 4, 3, 8, 8, 64)
    with pytest.raises(RuntimeError, match="multiple of kv heads"):
        torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.1)
    q, k, v = inputs(1, 2, 1, 9, 8, 64)
    with pytest.raises(RuntimeError, match="fewer keys than queries"):
        torch.ops.llama3_kernels.amx_attention(q.bfloat16(), k, v, 0.1)
