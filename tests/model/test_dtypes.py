"""The model runs in float32, bfloat16 and float16, on CPU and (when present) CUDA, close to
transformers' float32 logits, and generates with a KV cache in that dtype."""

from __future__ import annotations

import pytest
import torch

from llama3 import Llama, SamplingParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Max abs logit error allowed against float32 (logits here are of order 3).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.15, torch.float16: 0.02}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_logits_close_to_float32_transformers(tiny, device, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    hf = tiny.hf_model("3.1")
    llm = Llama.load(
        tiny.path("3.1", "hf"), device=device, dtype=dtype, max_seq_len=64, max_batch_size=2
    )
    assert llm.model.tok_embeddings.weight.dtype == dtype
    assert llm.model.tok_embeddings.weight.device.type == device
    ids = llm.tokenizer.encode("Precision matters for every token we compute.", bos=True, eos=False)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    ours = llm.model(torch.tensor([ids], device=device))[0].cpu()
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max() < TOLERANCE[dtype]
    # Incremental decoding with the cache in this dtype matches a full forward pass.
    r = llm.complete([ids], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert len(r.tokens) == 8
    full = (
        llm.model(torch.tensor([ids + r.tokens[:-1]], device=device))[0, len(ids) - 1 :]
        .argmax(-1)
        .cpu()
        .tolist()
    )
    agree = sum(a == b for a, b in zip(full, r.tokens)) / len(r.tokens)
    assert agree >= (1.0 if dtype == torch.float32 else 0.75)


def test_default_device_and_dtype(tiny):
    llm = Llama.load(tiny.path("3.0", "meta"), max_seq_len=32, max_batch_size=1)
    want = (
        (torch.device("cuda"), None)
        if torch.cuda.is_available()
        else (torch.device("cpu"), torch.float32)
    )
    assert llm.model.tok_embeddings.weight.device.type == want[0].type
    if want[1] is not None:
        assert llm.model.tok_embeddings.weight.dtype == want[1]
