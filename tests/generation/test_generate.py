"""Generation behaviour on a tiny random Llama 3.1 model with the real Llama 3 tokenizer: seeds,
stops, limits, streaming, logprobs, and the errors for bad requests."""

from __future__ import annotations

import pytest
import torch

from llama3 import ContextLengthExceeded, InvalidRequestError, Llama, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny):
    return Llama.load(tiny.path("3.1", "meta"), max_seq_len=96, max_batch_size=4)


def test_same_seed_same_text_and_different_seed_differs(llm):
    p = dict(temperature=1.0, top_p=1.0, max_tokens=16, ignore_eos=True)
    a = llm.complete(["Once upon a time"], SamplingParams(seed=7, **p))[0]
    b = llm.complete(["Once upon a time"], SamplingParams(seed=7, **p))[0]
    c = llm.complete(["Once upon a time"], SamplingParams(seed=8, **p))[0]
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_seeded_row_does_not_depend_on_the_batch(llm):
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=3, max_tokens=12, ignore_eos=True)
    alone = llm.complete(["The weather today"], p)[0].tokens
    other = SamplingParams(temperature=0.8, seed=99, max_tokens=20, ignore_eos=True)
    batched = llm.complete(
        ["A much longer prompt that comes first in the batch", "The weather today"], [other, p]
    )[1].tokens
    assert alone == batched


def test_greedy_ignores_seed_and_batching_matches_single(llm):
    prompts = ["Short", "A somewhat longer prompt than the first one", "Mid length prompt"]
    single = [
        llm.complete([q], SamplingParams(temperature=0, max_tokens=10, seed=s))[0].tokens
        for s, q in enumerate(prompts)
    ]
    batched = [
        r.tokens
        for r in llm.complete(prompts, SamplingParams(temperature=0, max_tokens=10, seed=123))
    ]
    assert single == batched


def test_max_tokens_and_finish_reason_length(llm):
    r = llm.complete(["Count:"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert len(r.tokens) == 5 and r.finish_reason == "length"


def test_generation_ends_at_context_limit(llm):
    ids = llm.tokenizer.encode("x " * 40, bos=True, eos=False)
    r = llm.complete([ids], SamplingParams(temperature=0, max_tokens=500, ignore_eos=True))[0]
    assert len(ids) + len(r.tokens) == llm.max_seq_len and r.finish_reason == "length"


def test_stop_string_cuts_text_and_streaming_equals_non_streaming(llm):
    base = llm.complete(["Tell me"], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[
        0
    ]
    assert len(base.text) > 10
    stop = base.text[6:9]
    want = base.text[: base.text.index(stop)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=(stop,))
    r = llm.complete(["Tell me"], params)[0]
    assert r.text == want and r.finish_reason == "stop"
    streamed = "".join(ev.text for ev in llm.stream(["Tell me"], params))
    assert streamed == r.text


def test_eot_is_a_stop_token(llm):
    """An instruct model's <|eot_id|> ends generation (forced here with a logit bias)."""
    assert {128001, 128008, 128009} <= set(llm.tokenizer.stop_tokens)
    for eot in (128009, 128008, 128001):
        r = llm.complete(
            ["Hi"], SamplingParams(temperature=0, max_tokens=10, logit_bias={eot: 100.0})
        )[0]
        assert r.tokens == [eot] and r.finish_reason == "stop" and r.text == ""
    toks, _ = llm.generate(
        [llm.tokenizer.encode("Hi", bos=True, eos=False)], max_gen_len=10, temperature=0
    )
    assert all(t not in llm.tokenizer.stop_tokens for t in toks[0])


def test_extra_stop_token_ids(llm):
    first = llm.complete(["Go"], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[
        0
    ].tokens
    r = llm.complete(
        ["Go"], SamplingParams(temperature=0, max_tokens=6, stop_token_ids=(first[2],))
    )[0]
    assert r.tokens == first[:3] and r.finish_reason == "stop"


def test_logprobs_and_top_alternatives_match_transformers(llm, tiny):
    hf = tiny.hf_model("3.1")
    r = llm.complete(
        ["Logprobs please"],
        SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3),
    )[0]
    ids = r.prompt_tokens + r.tokens
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
    for k, tok in enumerate(r.tokens):
        row = ref[len(r.prompt_tokens) - 1 + k]
        assert abs(r.logprobs[k] - row[tok].item()) < 1e-4
        vals, alt = torch.topk(row, 3)
        assert [t for t, _ in r.top_logprobs[k]] == alt.tolist()
        assert torch.allclose(torch.tensor([v for _, v in r.top_logprobs[k]]), vals, atol=1e-4)
        assert r.top_logprobs[k][0][0] == tok  # greedy picks the most likely token


def test_prompt_longer_than_context_is_an_error(llm):
    ids = llm.tokenizer.encode("word " * 200, bos=True, eos=False)
    with pytest.raises(ContextLengthExceeded) as e:
        llm.complete([ids])
    assert f"{len(ids)} tokens" in e.value.message and "96 tokens" in e.value.message


def test_too_many_prompts(llm):
    with pytest.raises(InvalidRequestError, match="5 prompts exceed max_batch_size=4"):
        llm.text_completion(["a"] * 5)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(min_p=2.0), "min_p"),
        (dict(frequency_penalty=5.0), "frequency_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(stop=("",)), "stop"),
        (dict(logprobs=99), "logprobs"),
        (dict(temperature=float("nan")), "temperature"),
    ],
)
def test_invalid_sampling_params(kwargs, param):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kwargs)
    assert e.value.param == param and e.value.hint


def test_empty_prompt_and_out_of_vocab_ids(llm):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.complete([[]])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.complete([[1, 2, 10**6]])


def test_default_context_is_capped_by_memory_not_128k(tiny):
    from llama3.utils.device import available_memory

    llm = Llama.load(tiny.path("3.1", "meta"), max_batch_size=4)
    args = llm.model.params
    assert args.max_position_embeddings == 131072
    assert 256 <= llm.max_seq_len <= 131072
    kv = llm.max_seq_len * 4 * args.kv_bytes_per_token(4)
    assert kv <= available_memory(torch.device("cpu"))


def test_meta_text_and_chat_completion_shapes(llm):
    out = llm.text_completion(
        ["I believe the meaning of life is"], max_gen_len=4, logprobs=True, echo=False
    )
    assert set(out[0]) == {"generation", "tokens", "logprobs"} and len(out[0]["tokens"]) == len(
        out[0]["logprobs"]
    )
    chat = llm.chat_completion(
        [[{"role": "user", "content": "what is the recipe of mayonnaise?"}]], max_gen_len=4
    )
    assert chat[0]["generation"]["role"] == "assistant" and isinstance(
        chat[0]["generation"]["content"], str
    )
    assert llm.formatter.encode_dialog_prompt([{"role": "user", "content": "hi"}])[:2] == [
        128000,
        128006,
    ]
