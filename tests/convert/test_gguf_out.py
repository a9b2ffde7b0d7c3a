"""`--to gguf`: the file loads in llama.cpp itself (llama-cpp-python) with the same tokenizer ids
as tiktoken and the same greedy tokens and logits as this project's engine; dtypes f32, f16, bf16
and q8_0 (checked against the `gguf` package's own quantizer); Llama 3.1 scaling as rope_freqs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import HF_TOKENIZER_CONFIG_31, tiktoken_oracle

from llama3.checkpoint.gguf_header import read_gguf_header

from .helpers import (
    TOKENS,
    TRICKY_TEXT,
    converted,
    hf_logits,
    llama_cpp_logits,
    llama_cpp_model,
    our_greedy,
    our_logits,
)

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = TOKENS[0].tolist()


def _metadata(path):
    return read_gguf_header(path).metadata


@pytest.mark.parametrize(
    "variant, src, dtype",
    [("3.0", "meta", None), ("3.1", "hf", "f16"), ("3.2", "meta2", None)],
)
def test_llama_cpp_loads_it_and_agrees(tiny, work, variant, src, dtype):
    kw = {"dtype": dtype} if dtype else {}
    out = converted(tiny, work, variant, src, "gguf", **kw)
    llm = llama_cpp_model(out)
    # the tokenizer: llama.cpp's own BPE over the exported vocabulary == tiktoken on Meta's file
    want = tiktoken_oracle().encode(TRICKY_TEXT)
    assert llm.tokenize(TRICKY_TEXT.encode(), add_bos=False, special=False) == want
    assert llm.tokenize(b"Hi", add_bos=True, special=False)[0] == 128000
    assert llm.tokenize(b"<|eot_id|>", add_bos=False, special=True) == [128009]
    md = llm.metadata
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
    assert "<|start_header_id|>" in md["tokenizer.chat_template"]
    # the weights: llama.cpp's logits (its KV cache is f16) and greedy tokens == ours on the file
    ours = our_logits(out)[0].detach()
    theirs = llama_cpp_logits(llm, PROMPT)
    assert torch.allclose(theirs, ours, atol=2e-2), (theirs - ours).abs().max()
    assert torch.allclose(ours, hf_logits(tiny.hf_model(variant))[0], atol=2e-2 if dtype else 1e-4)
    greedy = our_greedy(out, PROMPT, 8)
    llm.reset()
    theirs_greedy = []
    for tok in llm.generate(PROMPT, temp=0.0, top_k=1, reset=True):
        theirs_greedy.append(tok)
        if len(theirs_greedy) == 8:
            break
    assert theirs_greedy == greedy


def test_chat_template_and_special_ids_come_along(tiny, work):
    md = _metadata(converted(tiny, work, "3.1", "hf", "gguf", dtype="f16"))
    want = json.loads(HF_TOKENIZER_CONFIG_31.read_text())["chat_template"]
    assert md["tokenizer.chat_template"] == want
    assert md["tokenizer.ggml.bos_token_id"] == 128000
    assert md["tokenizer.ggml.eot_token_id"] == 128009
    # the HF source is Llama 3 Instruct's vocabulary: 128008 is still a reserved token there
    assert "tokenizer.ggml.eom_token_id" not in md
    assert md["tokenizer.ggml.tokens"][128008] == "<|reserved_special_token_4|>"
    tokens = md["tokenizer.ggml.tokens"]
    assert len(tokens) == 128256 and tokens[128009] == "<|eot_id|>"
    types = md["tokenizer.ggml.token_type"]
    assert types[0] == 1 and types[128009] == 3  # normal, control
    assert len(md["tokenizer.ggml.merges"]) > 280000


def test_llama31_tiktoken_source_names_eom(tiny, work):
    md = _metadata(converted(tiny, work, "3.1", "meta", "gguf"))
    assert md["tokenizer.ggml.tokens"][128008] == "<|eom_id|>"
    assert (md["tokenizer.ggml.eos_token_id"], md["tokenizer.ggml.eom_token_id"]) == (
        128001,
        128008,
    )
    assert md["tokenizer.chat_template"].startswith("{{- bos_token }}")


def test_q8_0_blocks_are_the_gguf_packages(tiny, work):
    import gguf

    out = converted(tiny, work, "3.0", "hf", "gguf", dtype="q8_0")
    tensors = gguf_tensors(out)
    assert tensors["blk.0.attn_norm.weight"][0] == gguf.GGMLQuantizationType.F32
    qtype, data = tensors["blk.1.ffn_down.weight"]
    assert qtype == gguf.GGMLQuantizationType.Q8_0
    src = tiny.hf_model("3.0").model.layers[1].mlp.down_proj.weight.detach().numpy()
    want = gguf.quants.quantize(src, gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(data, want.reshape(-1))
    assert _metadata(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    # within Q8_0's error of the float model, and llama.cpp runs it
    ref = hf_logits(tiny.hf_model("3.0"))[0]
    assert (our_logits(out)[0] - ref).abs().max() < 0.1
    theirs = llama_cpp_logits(llama_cpp_model(out), PROMPT)
    assert (theirs - ref).abs().max() < 0.2


def test_bf16_keeps_the_bits(tiny, work):
    out = converted(tiny, work, "3.0", "meta", "gguf", dtype="bf16")
    from llama3.checkpoint import read_checkpoint

    got = read_checkpoint(out).tensors["layers.0.attention.wq.weight"].load(torch.bfloat16)
    want = read_checkpoint(tiny.path("3.0", "meta")).tensors["layers.0.attention.wq.weight"]
    assert torch.equal(got, want.load(torch.float32).to(torch.bfloat16))
    assert _metadata(out)["general.file_type"] == 32  # MOSTLY_BF16
    llama_cpp_model(out)  # llama.cpp accepts the file


def test_scaled_rope_becomes_rope_freqs(tiny, work):
    out = converted(tiny, work, "3.1", "meta", "gguf")
    _, factors = gguf_tensors(out)["rope_freqs.weight"]
    _, want = gguf_tensors(tiny.path("3.1", "gguf"))["rope_freqs.weight"]
    assert np.allclose(factors.view(np.float32), want.view(np.float32), rtol=1e-6)
    # ... and back: a Meta directory with use_scaled_rope, from the GGUF's divisors
    meta = converted(tiny, work, "3.1", "gguf", "meta")
    params = json.loads((meta / "params.json").read_text())
    assert params["use_scaled_rope"] is True and "rope_scaling_factor" not in params


def test_gguf_source_keeps_its_blocks(tiny, work):
    src = gguf_tensors(tiny.path("3.0", "gguf-q8"))
    out = gguf_tensors(converted(tiny, work, "3.0", "gguf-q8", "gguf"))
    assert set(src) == set(out)
    for name, (qtype, data) in src.items():
        assert out[name][0] == qtype, name
        assert np.array_equal(out[name][1], data), name


def gguf_tensors(path) -> dict[str, tuple[int, np.ndarray]]:
    """name -> (ggml type, the tensor's bytes), from the tensor table (the `gguf` package's reader
    takes seconds over a 128K-token vocabulary)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for t in read_gguf_header(path).tensors:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
        n = int(np.prod(t.ne)) // block * size
        out[t.name] = (t.ggml_type, np.array(data[t.offset : t.offset + n]))
    return out
