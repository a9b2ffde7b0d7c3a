"""Log-probabilities and greedy tokens equal transformers' LlamaForCausalLM on the same weights, for
Llama 3.0, 3.1 (scaled RoPE) and 3.2 (tied embeddings, factor 32), in every checkpoint format."""

from __future__ import annotations

import pytest
import torch

from llama3 import Llama

VARIANTS = ["3.0", "3.1", "3.2"]
FORMATS = ["meta", "meta2", "hf", "gguf"]
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Llamas are large animals that"]


def _rescore(hf, toks: list[int]) -> torch.Tensor:
    """transformers' log-prob of each token given its prefix (tokens 1..n)."""
    with torch.no_grad():
        logits = hf(torch.tensor([toks])).logits[0]
    return torch.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(toks[1:])[:, None])[:, 0]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_echo_logprobs_and_greedy_tokens_match_transformers(tiny, variant, fmt):
    hf = tiny.hf_model(variant)
    llm = Llama.load(tiny.path(variant, fmt), max_seq_len=128, max_batch_size=4)
    prompts = [llm.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    # Batched prompts of different lengths, echo: prompt + generation with a logprob per token.
    toks, lps = llm.generate(prompts, max_gen_len=10, temperature=0, logprobs=True, echo=True)
    stops = set(llm.tokenizer.stop_tokens)
    for ids, t, lp in zip(prompts, toks, lps):
        assert t[: len(ids)] == ids and len(lp) == len(t)
        assert lp[0] == 0.0  # Meta's convention for the first prompt token
        ref = _rescore(hf, t)
        assert torch.allclose(torch.tensor(lp[1:]), ref, atol=1e-4), (
            (torch.tensor(lp[1:]) - ref).abs().max()
        )
        # Greedy continuation equals transformers' generate (cut at the first stop token, as Meta does).
        want = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=0,
        )[0, len(ids) :].tolist()
        cut = next((i for i, x in enumerate(want) if x in stops), len(want))
        assert t[len(ids) :] == want[:cut]


def test_formats_agree_with_each_other(tiny):
    outs = []
    for fmt in ["meta", "meta2", "hf", "gguf"]:
        llm = Llama.load(tiny.path("3.1", fmt), max_seq_len=64, max_batch_size=1)
        toks = torch.tensor([llm.tokenizer.encode("agreement across formats", bos=True, eos=False)])
        outs.append(llm.model(toks))
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-5)


def test_scaled_rope_matches_transformers_far_into_the_context(tiny):
    """3.1 scaling only changes low frequencies; check at positions past the original 8192."""
    hf = tiny.hf_model("3.1")
    llm = Llama.load(tiny.path("3.1", "meta"), max_seq_len=20000, max_batch_size=1)
    torch.manual_seed(0)
    toks = torch.randint(0, 128000, (1, 24))
    start = 15000
    with torch.no_grad():
        ref = hf(toks, position_ids=torch.arange(start, start + 24)[None]).logits[0]
    ours = llm.model(toks, start)[0]
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    # The test can fail: the same model without the scaling gives clearly different logits.
    from llama3.model.rope import inverse_frequencies

    llm.model._inv_freq = inverse_frequencies(llm.model.params.head_dim, 500000.0)
    unscaled = llm.model(toks, start)[0]
    assert (unscaled - ref).abs().max() > 1e-2
