"""Prompt-chunk products in bfloat16 (CPUs with AMX): the float product to bfloat16's rounding,
taken only by many-row products on such CPUs."""

from __future__ import annotations

import pytest
import torch

from llama3 import kernels
from llama3.quant import bf16_rows
from llama3.quant.int4 import Int4Linear
from llama3.quant.int8 import Int8Linear


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_product_is_the_float_product_to_bfloat16_rounding(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 96, generator=g)
    codes = torch.randint(-127, 128, (200, 96), dtype=torch.int8, generator=g)
    scale = torch.rand(200, generator=g) + 0.5
    want = x.double() @ (codes.double() * scale.double()[:, None]).T
    y = bf16_rows.product(x, 200, lambda s, e: codes[s:e], scale)
    assert y.dtype == torch.float32 and y.shape == (70, 200)
    assert _rel(y, want) < 1e-2  # activations and outputs rounded to 8 significant bits
    monkeypatch.setattr(bf16_rows, "_SLAB_BYTES", 96 * 2 * 7)  # slabs of 7 rows: same result
    assert torch.equal(bf16_rows.product(x, 200, lambda s, e: codes[s:e], scale), y)


def test_only_prompt_chunks_on_amx_cpus_take_it(monkeypatch):
    monkeypatch.setattr(bf16_rows, "_amx", lambda: True)
    assert bf16_rows.applies(torch.zeros(bf16_rows.MIN_ROWS, 8))
    assert not bf16_rows.applies(torch.zeros(bf16_rows.MIN_ROWS - 1, 8))  # decoding rows
    assert not bf16_rows.applies(torch.zeros(512, 8, requires_grad=True))  # autograd
    monkeypatch.setattr(bf16_rows, "_amx", lambda: False)
    assert not bf16_rows.applies(torch.zeros(512, 8))


def test_turned_off_by_the_environment(monkeypatch):
    bf16_rows._amx.cache_clear()
    monkeypatch.setenv("LLAMA3_BF16_PREFILL", "0")
    try:
        assert not bf16_rows._amx()
    finally:
        bf16_rows._amx.cache_clear()


def test_quantized_layers_route_prompt_chunks_through_it(monkeypatch):
    assert kernels.available(), kernels.unavailable_reason()
    monkeypatch.setattr(bf16_rows, "_amx", lambda: True)
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(bf16_rows.MIN_ROWS, 64, generator=torch.Generator().manual_seed(2))
    for layer in (Int8Linear.from_float(w), Int4Linear.from_float(w, 32)):
        dense = (
            layer.dequantize()
            if isinstance(layer, Int8Linear)
            else layer._dequantize_rows(0, 96, layer._slab(96))
        )
        want = x.double() @ dense.double().T
        chunk = layer(x)  # bfloat16
        assert 1e-4 < _rel(chunk, want) < 1e-2
        rows = layer(x[:8])  # a decode step's rows: the int16-grid kernels, or, for int4 in
        # the AVX2 build, its int8-per-32-block kernel (an error of bfloat16's order)
        q8 = isinstance(layer, Int4Linear) and kernels.int4_q8()
        assert _rel(rows, want[:8]) < (1e-2 if q8 else 1e-4)


def test_only_quantized_models_prompts_attend_in_bfloat16(tiny, monkeypatch):
    """A quantized model's long prompts attend in bfloat16 on AMX CPUs (forced here, so the path
    runs on any CPU): the logits stay within bfloat16's rounding of the float32 attention's and
    differ from them, so the path was taken. Float models, short prompts, autograd (fine-tuning)
    and serving batches that also hold decode rows keep float32."""
    from llama3 import Llama
    from llama3.model.kv_cache import KVCache
    from llama3.model.paged_cache import PagedBatch
    from llama3.quant.apply import quantize_model

    monkeypatch.setattr(bf16_rows, "_amx", lambda: True)
    q = torch.zeros(1, 4, bf16_rows.MIN_ROWS, 16)
    mixed = PagedBatch.__new__(PagedBatch)
    mixed.decodes = [object()]
    assert not bf16_rows.attention_applies(q, None)  # autograd on
    with torch.no_grad():
        assert bf16_rows.attention_applies(q, None)
        assert not bf16_rows.attention_applies(q[:, :, :-1], None)  # short prompts, decoding
        assert not bf16_rows.attention_applies(q.bfloat16(), None)  # models not in float32
        assert not bf16_rows.attention_applies(q, mixed)

    llm = Llama.load(tiny.path("3.0", "hf"), max_seq_len=128)
    assert not any(layer.attention.bf16_prompts for layer in llm.model.layers)
    model = quantize_model(llm.model, "int8")
    assert all(layer.attention.bf16_prompts for layer in model.layers)
    tokens = torch.arange(100, 100 + 80)[None]

    def prompt_logits(bf16_attention: bool) -> torch.Tensor:
        for layer in model.layers:
            layer.attention.bf16_prompts = bf16_attention
        cache = KVCache(model.params, 1, 128)
        return model(tokens, 0, cache)

    low, full = prompt_logits(True), prompt_logits(False)
    assert not torch.equal(low, full)
    assert _rel(low, full) < 2e-2


def test_outputs_widen_and_scale_per_column_exactly():
    """`scale_columns` (the bfloat16 products' outputs to float32, scaled) is PyTorch's own
    widening and multiply, bit for bit, into a column slice of a wider matrix."""
    assert kernels.available(), kernels.unavailable_reason()
    g = torch.Generator().manual_seed(3)
    part = torch.randn(37, 203, generator=g).to(torch.bfloat16)
    scale = torch.rand(203, generator=g)
    wide = torch.zeros(37, 300)
    torch.ops.llama3_kernels.scale_columns(part, scale, wide[:, 50:253])
    assert torch.equal(wide[:, 50:253], part.float() * scale)
    assert not wide[:, :50].any() and not wide[:, 253:].any()


def test_swiglu_kernel_is_pytorchs_silu_times_up_in_bfloat16():
    """`swiglu_bf16` against PyTorch's float32 SiLU(gate * s1) * (up * s3) rounded to bfloat16:
    equal but for rare one-step differences (its exponential is not PyTorch's to the last bit),
    on strided rows, down to SiLU's far tails."""
    assert kernels.available(), kernels.unavailable_reason()
    g = torch.Generator().manual_seed(4)
    both = (torch.randn(90, 2 * 203, generator=g) * 4).to(torch.bfloat16)
    gate, up = both[:, :203], both[:, 203:]
    gate[0, :4] = torch.tensor([-120.0, -30.0, 30.0, 120.0]).to(torch.bfloat16)
    gs, us = torch.rand(203, generator=g) * 2, torch.rand(203, generator=g) * 2
    gs[:4] = 1.0
    out = torch.empty(90, 210, dtype=torch.bfloat16)[:, :203]
    torch.ops.llama3_kernels.swiglu_bf16(gate, up, gs, us, out)
    ref = torch.nn.functional.silu(gate.float() * gs) * (up.float() * us)
    got, want = out.float(), ref.to(torch.bfloat16).float()
    differ = got != want
    assert differ.float().mean() < 1e-3
    assert torch.all((got - want).abs()[differ] <= want.abs()[differ] * 2**-7 + 1e-30)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_fused_feed_forward_equals_the_unfused_one(monkeypatch, scheme):
    """A quantized layer's prompt SwiGLU kept in bfloat16 between its products gives the
    feed-forward output of the float32 path (each rounds w2's input to bfloat16), also over
    several slabs."""
    from llama3.model.transformer import FeedForward

    assert kernels.available(), kernels.unavailable_reason()
    monkeypatch.setattr(bf16_rows, "_amx", lambda: True)
    g = torch.Generator().manual_seed(5)
    ff = FeedForward(64, 160)
    w1, w3, w2 = (torch.randn(s, generator=g) * 0.1 for s in ((160, 64), (160, 64), (64, 160)))
    make = Int8Linear.from_float if scheme == "int8" else Int4Linear.from_float
    ff.w13, ff.w2 = make(torch.cat([w1, w3])), make(w2)
    x = torch.randn(1, bf16_rows.MIN_ROWS + 6, 64, generator=g)
    with torch.inference_mode():
        fused = ff(x)
        hidden = ff.w13.prompt_swiglu(x)
        assert hidden is not None and hidden.dtype == torch.bfloat16
        gate, up = ff.w13(x).chunk(2, dim=-1)
        unfused = ff.w2(torch.nn.functional.silu(gate) * up)
        assert fused.dtype == torch.float32
        assert _rel(fused, unfused) < 1e-3
        monkeypatch.setattr(bf16_rows, "_SLAB_BYTES", 64 * 4 * 24)  # gate/up slabs of 24 rows
        assert torch.equal(ff(x), fused)
        assert ff.w13.prompt_swiglu(x[:, :8]) is None  # decode rows keep the float32 kernels


def test_int4_rows_reach_bfloat16_as_the_eager_dequantization_does():
    """`int4_rows_bf16` (packed int4 rows straight to bfloat16) equals the eager path's float32
    dequantization rounded to bfloat16, bit for bit, for every group size and a row slice."""
    assert kernels.available(), kernels.unavailable_reason()
    w = torch.randn(70, 256, generator=torch.Generator().manual_seed(6))
    for group in (32, 64, 128):
        layer = Int4Linear.from_float(w, group)
        want = layer._dequantize_rows(0, 70, layer._slab(70)).to(torch.bfloat16)
        assert torch.equal(layer._bf16_rows(0, 70), want)
        assert torch.equal(layer._bf16_rows(20, 45), want[20:45])


def test_int8_codes_reach_bfloat16_exactly():
    """`int8_rows_bf16` is PyTorch's int8 -> bfloat16 conversion bit for bit: every code value,
    vector body and tail, and the row slices an int8 layer's prompt products hand it."""
    assert kernels.available(), kernels.unavailable_reason()
    every = torch.arange(-128, 128, dtype=torch.int8).reshape(8, 32)
    assert torch.equal(torch.ops.llama3_kernels.int8_rows_bf16(every), every.to(torch.bfloat16))
    odd = torch.randint(-128, 128, (7, 37), dtype=torch.int8, generator=torch.Generator())
    assert torch.equal(torch.ops.llama3_kernels.int8_rows_bf16(odd), odd.to(torch.bfloat16))
    layer = Int8Linear.from_float(torch.randn(70, 96, generator=torch.Generator().manual_seed(7)))
    rows, scale = layer._prompt_rows()
    assert torch.equal(rows(20, 45), layer.codes[20:45].to(torch.bfloat16))
    assert scale is layer.scale


def test_norms_hand_bfloat16_rows_to_the_products_with_the_same_logits(tiny, monkeypatch):
    """On the bfloat16 prompt path a layer's norms give their products bfloat16 rows and the first
    residual add joins the second norm (`rms_norm_bf16`): the logits equal the unfused path's bit
    for bit, since the products rounded their float32 input to the same bfloat16 before."""
    from llama3 import Llama
    from llama3.model.kv_cache import KVCache
    from llama3.model.transformer import RMSNorm, TransformerBlock
    from llama3.quant.apply import quantize_model

    assert kernels.available(), kernels.unavailable_reason()
    monkeypatch.setattr(bf16_rows, "_amx", lambda: True)
    llm = Llama.load(tiny.path("3.0", "hf"), max_seq_len=128)
    model = quantize_model(llm.model, "int8")
    tokens = torch.arange(100, 100 + 80)[None]
    fused_calls = []
    real = RMSNorm.bf16
    monkeypatch.setattr(RMSNorm, "bf16", lambda self, *a: fused_calls.append(1) or real(self, *a))

    def logits() -> torch.Tensor:
        return model(tokens, 0, KVCache(model.params, 1, 128))

    fused = logits()
    assert len(fused_calls) == 2 * model.n_layers  # the fused path ran
    short = torch.zeros(1, bf16_rows.MIN_ROWS - 1, model.params.dim)
    assert not model.layers[0].bf16_inputs(short)  # decoding rows and short prompts: float32
    monkeypatch.setattr(TransformerBlock, "bf16_inputs", lambda self, x: False)
    assert torch.equal(fused, logits())
