"""Int8 projections, on both product paths (the native kernel, fbgemm where it cannot be built): the
product equals the float product with the same int8 weights within the activation grid's bound,
each row is independent of its batch, and on the real SmolLM2 the quality is that of weight-only
int8: within 1 % of the float model's perplexity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama3 import Llama, kernels
from llama3.errors import InvalidRequestError
from llama3.quant.apply import QuantSpec, check_device, quantize_model
from llama3.quant.int8 import (
    Int8Embedding,
    Int8Linear,
    codes_as_float,
    dequantized_product,
    quantize_rows,
)


@pytest.fixture(params=["kernel", "fbgemm"])
def path(request, monkeypatch):
    """Which product path new Int8Linear layers take."""
    if request.param == "kernel":
        why = kernels.unavailable_reason()
        if why and "failed" not in why:  # a build failure is a failure; a platform without
            pytest.skip(why)  # AVX2 or a compiler simply has no kernel to test
        assert why is None, why
    else:
        monkeypatch.setattr(kernels, "available", lambda: False)
    return request.param


def int16_grid_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The kernel's worst-case error: each activation row rounded on a grid of max|x| / 32767, so
    each product is off by at most half a step times |w|; plus float32 summation rounding."""
    half_step = x.abs().amax(dim=-1, keepdim=True) / 32767 / 2
    return half_step * w.abs().sum(dim=1) + 1e-6 * (x.abs() @ w.abs().t())


def test_int8_product_is_the_float_product_with_int8_weights(path):
    torch.manual_seed(0)
    w = torch.randn(256, 128)
    x = torch.randn(3, 5, 128)
    x[0, 0] *= 50  # one token with large activations must not flatten the others
    x[1, 2, 7] = 40.0  # nor one channel
    lin = Int8Linear.from_float(w)
    deq = lin.dequantize()
    # weights: symmetric per row, within half a step of the float weights
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    y, ref = lin(x), F.linear(x, deq)
    assert y.shape == (3, 5, 256)
    if path == "kernel":
        assert ((y - ref).abs() <= int16_grid_bound(x, deq)).all()
    rel = (y - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert rel.max() < 1e-3, rel.max()  # one 7-bit digit alone (fbgemm's own) gives ~1e-2 here
    # alone or in a batch, the same product: bit for bit in the kernel (each row summed in the
    # same order), within rounding on fbgemm (each call's grid is pinned to [-1, 1])
    alone = torch.stack([lin(r[None])[0] for r in x.reshape(-1, 128)]).reshape(3, 5, 256)
    if path == "kernel":
        assert torch.equal(y, alone)
    torch.testing.assert_close(y, alone, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_tensors_rebuild_the_same_layer(path):
    torch.manual_seed(1)
    lin = Int8Linear.from_float(torch.randn(96, 64))
    parts = lin.tensors()
    assert parts["codes"].dtype == torch.int8 and parts["scale"].shape == (96,)
    again = Int8Linear(parts["codes"], parts["scale"])
    x = torch.randn(4, 64)
    assert torch.equal(lin(x), again(x))


def test_both_paths_hold_the_same_weights_and_agree(monkeypatch):
    """A checkpoint written on a machine with the kernel loads on one without it, and back."""
    torch.manual_seed(2)
    w, x = torch.randn(64, 96), torch.randn(5, 96)
    fast = Int8Linear.from_float(w)
    monkeypatch.setattr(kernels, "available", lambda: False)
    slow = Int8Linear(**fast.tensors())
    assert all(torch.equal(a, b) for a, b in zip(fast.tensors().values(), slow.tensors().values()))
    ref = F.linear(x, fast.dequantize())
    torch.testing.assert_close(fast(x), ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(slow(x), ref, rtol=0, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("path", ["kernel"], indirect=True)
def test_a_layer_moved_off_the_cpu_still_runs(path):
    """Our kernel is CPU-only; elsewhere the layer multiplies its dequantized weights (shown on
    the meta device, which runs shapes only: no GPU here)."""
    lin = Int8Linear.from_float(torch.randn(16, 64))
    moved = lin.to("meta")
    y = moved(torch.randn(3, 64, device="meta", dtype=torch.bfloat16))
    assert y.device.type == "meta" and y.shape == (3, 16) and y.dtype == torch.bfloat16


def test_codes_as_float_is_exact_for_every_code():
    codes = torch.arange(-128, 128, dtype=torch.int8)
    assert torch.equal(codes_as_float(codes), codes.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gpu_product_compiled_equals_the_float_product(dtype):
    """The product GPU layers run (compiled: one row as a fused reduction over codes decoded by
    integer operations; several rows, or eager: a cast and a float product), compiled here on
    the CPU: the same values as the float product with the dequantized weights."""
    torch.manual_seed(3)
    codes, scale = Int8Linear.from_float(torch.randn(300, 256)).tensors().values()
    deq = codes.float() * scale[:, None]
    compiled = torch.compile(dequantized_product, fullgraph=True, dynamic=False)
    for shape in [(1, 1, 256), (2, 3, 256)]:
        x = torch.randn(shape).to(dtype)
        ref = F.linear(x.float(), deq)
        # (several bfloat16 rows are not compiled here: on the CPU Inductor rewrites that
        # product into its own int8 kernel, which fails to build in torch 2.13)
        several = shape[0] * shape[1] > 1
        for fn in (
            (dequantized_product,)
            if several and dtype != torch.float32
            else (
                compiled,
                dequantized_product,
            )
        ):
            y = fn(x, codes, scale)
            assert y.dtype == dtype and y.shape == (*shape[:-1], 300)
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(y.float(), ref, rtol=0, atol=tol * ref.abs().max().item())


def test_int8_is_allowed_on_gpus_and_int4_is_a_clear_error():
    check_device(QuantSpec(8), torch.device("cuda"))  # compiled there (no GPU in this test)
    with pytest.raises(InvalidRequestError, match="int4-g32 runs on CPU only") as e:
        check_device(QuantSpec(4, 32), torch.device("cuda"))
    assert "--quantize int8" in e.value.hint


def test_unknown_scheme_is_a_clear_error(tiny):
    llm = Llama.load(tiny.path("3.0", "hf"), max_seq_len=64)
    with pytest.raises(InvalidRequestError, match="unknown quantization 'int3'"):
        quantize_model(llm.model, "int3")
    with pytest.raises(InvalidRequestError, match="int4-g64"):
        QuantSpec.parse("int4-g48")


@pytest.mark.parametrize("variant", ["3.2", "3.0"])  # tied and untied embeddings
def test_embeddings_are_int8_rows_held_once(tiny, variant):
    path = tiny.path(variant, "gguf")
    q = Llama.load(path, max_seq_len=64, quantize="int8")
    emb, head = q.model.tok_embeddings, q.model.output
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
    assert q.model.dtype == torch.float32 and q.model.device.type == "cpu"
    ids = torch.tensor([[0, 5, 17, q.model.params.vocab_size - 1]])
    float_model = Llama.load(path, max_seq_len=64).model
    table = float_model.tok_embeddings.weight
    rows = emb(ids)
    assert rows.shape == (1, 4, table.shape[1]) and rows.dtype == torch.float32
    # the lookup is the table's rows on the int8 grid (half a step of each row's scale away)
    step = table.abs().amax(1)[ids] / 127
    assert ((rows - table[ids]).abs() <= step[..., None] * 0.5 + 1e-7).all()
    if variant == "3.2":  # tied: the head's own codes, not a second table
        assert emb.codes.data_ptr() == head.codes.data_ptr()
        assert torch.equal(rows[0], head.dequantize()[ids[0]])
    else:
        assert emb.codes.data_ptr() != head.codes.data_ptr()
    # quantizing a built float model gives the same embedding as quantizing while loading
    quantize_model(float_model, "int8")
    assert torch.equal(float_model.tok_embeddings.codes, emb.codes)
    assert torch.equal(float_model.tok_embeddings.scale, emb.scale)


def _ppl_kl(ref: Llama, q: Llama, text: str) -> tuple[float, float, float, float]:
    ids = torch.tensor([ref.tokenizer.encode_prompt(text)[:2048]])
    with torch.inference_mode():
        lf = torch.log_softmax(ref.model(ids)[0], -1)
        lq = torch.log_softmax(q.model(ids)[0], -1)
    kl = (lf.exp() * (lf - lq)).sum(-1).mean().item()
    tgt = ids[0, 1:, None]
    ppl_f = lf[:-1].gather(1, tgt).mean().neg().exp().item()
    ppl_q = lq[:-1].gather(1, tgt).mean().neg().exp().item()
    agree = (lf.argmax(-1) == lq.argmax(-1)).float().mean().item()
    return ppl_f, ppl_q, kl, agree


def long_text() -> str:
    """~2k tokens of English prose that ships with CPython (the language reference's topics):
    a perplexity ratio over a few dozen tokens moves by ~1 % with any rounding change, over 2k
    its standard error is ~0.25 %."""
    from pydoc_data.topics import topics

    return "\n\n".join(
        topics[k] for k in ("assignment", "class", "function", "if", "while", "try", "with")
    )


def test_smollm2_int8_is_within_one_percent_of_float(smollm2, smollm2_path):
    q = Llama.load(smollm2_path, max_seq_len=2048, quantize="int8")
    assert isinstance(q.model.layers[0].feed_forward.w2, Int8Linear)
    assert isinstance(q.model.layers[0].attention.wqkv, Int8Linear)
    assert isinstance(q.model.output, Int8Linear)
    assert q.model.tok_embeddings.codes.data_ptr() == q.model.output.codes.data_ptr()  # tied
    ppl_f, ppl_q, kl, agree = _ppl_kl(smollm2, q, long_text())
    # measured on this text: KL ~0.005, perplexity +0.3 % (BENCHMARKS.md: a 4k-token run, +0.14 %)
    assert kl < 0.02, kl
    assert abs(ppl_q / ppl_f - 1) < 0.01, (ppl_f, ppl_q)
    assert agree > 0.9, agree


def test_a_gguf_table_quantized_in_chunks_is_the_whole_tables_quantization(
    smollm2_float, smollm2_path, monkeypatch
):
    """The token table is dequantized from the file's blocks a chunk of rows at a time (the whole
    float32 table was the load's peak); rows quantize one by one, so nothing changes."""
    from llama3.quant import apply

    monkeypatch.setattr(apply, "_TABLE_CHUNK", 1000)  # chunks that do not divide the vocabulary
    calls = []
    real = apply.dequantize
    monkeypatch.setattr(apply, "dequantize", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    q = Llama.load(smollm2_path, max_seq_len=64, quantize="int8")
    smollm2 = smollm2_float
    vocab = smollm2.model.params.vocab_size
    assert len(calls) == -(-vocab // 1000) and calls[-1] == (vocab % 1000, 576)  # the chunks ran
    codes, scale = quantize_rows(smollm2.model.tok_embeddings.weight)
    assert torch.equal(q.model.tok_embeddings.codes, codes)
    assert torch.equal(q.model.tok_embeddings.scale, scale)
