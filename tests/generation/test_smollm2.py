"""The real SmolLM2-135M-Instruct GGUF (Q8_0 embeddings, Q4_1 layers) against transformers loading the
same file: identical greedy tokens and matching logits."""

from __future__ import annotations

import torch

from llama3 import SamplingParams

PROMPTS = [
    "The three primary colors are",
    "def fibonacci(n):",
    "Paris is the capital of",
]


def test_logits_match_transformers(smollm2_float, smollm2_hf):
    smollm2 = smollm2_float
    ids = smollm2.tokenizer.encode_prompt("Llamas are domesticated South American camelids.")
    with torch.no_grad():
        ref = smollm2_hf(torch.tensor([ids])).logits[0]
    ours = smollm2.model(torch.tensor([ids]))[0]
    assert torch.allclose(ours, ref, atol=1e-3), (ours - ref).abs().max()


def test_greedy_tokens_match_transformers_for_32_tokens(smollm2_float, smollm2_hf):
    smollm2 = smollm2_float
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    results = smollm2.complete(PROMPTS, params)
    for prompt, r in zip(PROMPTS, results):
        ids = smollm2.tokenizer.encode_prompt(prompt)
        want = smollm2_hf.generate(
            torch.tensor([ids]),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[0, len(ids) :].tolist()
        assert r.tokens == want, (
            prompt,
            smollm2.tokenizer.decode(r.tokens),
            smollm2.tokenizer.decode(want),
        )
        assert len(r.tokens) == 32 and r.finish_reason == "length"


def test_chat_answer_stops_on_im_end(smollm2):
    r = smollm2.chat(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(temperature=0, max_tokens=64),
    )[0]
    assert r.finish_reason == "stop"
    assert r.tokens[-1] in smollm2.tokenizer.stop_tokens
    assert "Paris" in r.text
