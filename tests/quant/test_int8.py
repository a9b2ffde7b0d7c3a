"""Int8 projections (fbgemm W8A8-dynamic): close to float on random weights, row-independent in a
batch, and a bounded, measured quality loss on the real SmolLM2 against its float model."""

from __future__ import annotations

import pytest
import torch

from llama3 import Llama
from llama3.errors import InvalidRequestError
from llama3.quant.int8 import Int8Linear, quantize_model


def test_int8_linear_is_close_to_float_and_row_independent():
    torch.manual_seed(0)
    w = torch.randn(256, 128)
    x = torch.randn(3, 5, 128)
    x[0, 0] *= 50  # one token with large activations must not flatten the others
    lin = Int8Linear(w)
    y, ref = lin(x), x @ w.t()
    assert y.shape == (3, 5, 256)
    rel = (y - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert rel.max() < 0.02
    # each row is quantized on its own scale: alone or in a batch, the same product
    alone = torch.stack([lin(r[None])[0] for r in x.reshape(-1, 128)]).reshape(3, 5, 256)
    torch.testing.assert_close(y, alone, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_unknown_scheme_is_a_clear_error(tiny):
    llm = Llama.load(tiny.path("3.0", "hf"), max_seq_len=64)
    with pytest.raises(InvalidRequestError, match="unknown quantization 'int3'"):
        quantize_model(llm.model, "int3")


def test_smollm2_int8_quality_is_bounded(smollm2, smollm2_path):
    q = Llama.load(smollm2_path, max_seq_len=2048, quantize="int8")
    assert isinstance(q.model.layers[0].feed_forward.w2, Int8Linear)
    assert isinstance(q.model.layers[0].attention.wqkv, Int8Linear)
    text = (
        "The llama is a domesticated South American camelid, widely used as a meat and pack "
        "animal by Andean cultures since the pre-Columbian era. Llamas are social animals and "
        "live with others as a herd. Their wool is soft and contains only a small amount of "
        "lanolin. Llamas can learn simple tasks after a few repetitions."
    )
    ids = torch.tensor([smollm2.tokenizer.encode_prompt(text)])
    with torch.inference_mode():
        lf = torch.log_softmax(smollm2.model(ids)[0], -1)
        lq = torch.log_softmax(q.model(ids)[0], -1)
    kl = (lf.exp() * (lf - lq)).sum(-1).mean().item()
    tgt = ids[0, 1:, None]
    ppl_f = lf[:-1].gather(1, tgt).mean().neg().exp().item()
    ppl_q = lq[:-1].gather(1, tgt).mean().neg().exp().item()
    # measured on this text: KL ~0.1, perplexity +10-20 % (BENCHMARKS.md has the full figures)
    assert kl < 0.25, kl
    assert ppl_q < ppl_f * 1.35, (ppl_f, ppl_q)
    agree = (lf.argmax(-1) == lq.argmax(-1)).float().mean().item()
    assert agree > 0.8, agree
