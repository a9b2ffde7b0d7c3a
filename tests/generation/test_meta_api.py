"""Meta's reference usage runs unchanged after `from llama import` -> `from llama3 import`."""

from __future__ import annotations

import torch

from llama3 import ChatFormat, Dialog, Llama, ModelArgs, Tokenizer, Transformer


def test_build_with_metas_signature_and_example_dialogs(tiny):
    ckpt = tiny.path("3.0", "meta2")
    generator = Llama.build(
        ckpt_dir=str(ckpt),
        tokenizer_path=str(ckpt / "tokenizer.model"),
        max_seq_len=512,
        max_batch_size=4,
    )
    assert isinstance(generator.tokenizer, Tokenizer) and isinstance(
        generator.formatter, ChatFormat
    )
    assert isinstance(generator.model, Transformer) and isinstance(
        generator.model.params, ModelArgs
    )
    dialogs: list[Dialog] = [
        [{"role": "user", "content": "what is the recipe of mayonnaise?"}],
        [
            {"role": "system", "content": "Always answer with Haiku"},
            {"role": "user", "content": "I am going to Paris, what should I see?"},
        ],
    ]
    results = generator.chat_completion(dialogs, max_gen_len=8, temperature=0.6, top_p=0.9)
    assert len(results) == 2 and all(r["generation"]["role"] == "assistant" for r in results)
    # Same seed, same outputs: build() seeds a private stream, not torch's global RNG.
    state = torch.random.get_rng_state()
    again = Llama.build(str(ckpt), str(ckpt / "tokenizer.model"), 512, 4).chat_completion(
        dialogs, max_gen_len=8
    )
    assert [r["generation"] for r in again] == [r["generation"] for r in results]
    assert torch.equal(state, torch.random.get_rng_state())


def test_text_completion_echo_returns_prompt_and_logprobs(tiny):
    llm = Llama.build(str(tiny.path("3.0", "meta")), None, 128, 4)
    prompt = "I believe the meaning of life is"
    out = llm.text_completion([prompt], max_gen_len=4, temperature=0, logprobs=True, echo=True)[0]
    n_prompt = len(llm.tokenizer.encode(prompt, bos=True, eos=False))
    assert out["generation"].startswith("<|begin_of_text|>" + prompt)
    assert len(out["tokens"]) == len(out["logprobs"]) >= n_prompt
    assert out["logprobs"][0] == 0.0


def test_quantized_gguf_close_to_float(tiny):
    """A Q8_0 GGUF of the same weights stays close to transformers' float32 log-probabilities."""
    hf = tiny.hf_model("3.1")
    llm = Llama.load(tiny.path("3.1", "gguf-q8"), max_seq_len=64, max_batch_size=1)
    ids = llm.tokenizer.encode("Quantized weights, nearly the same logits.", bos=True, eos=False)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
    ours = torch.log_softmax(llm.model(torch.tensor([ids]))[0], -1)
    err = (ours - ref).abs().max().item()
    assert 1e-6 < err < 0.1  # not bit-identical (it is quantized) but close
