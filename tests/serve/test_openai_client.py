"""The official `openai` client against a real `llama3 serve` on loopback (SmolLM2, greedy).

The oracle is the same model loaded in this process through the offline path (`Llama.chat` /
`Llama.complete`, itself checked against transformers' logits): at temperature 0 the server's text,
token counts and logprobs must equal it.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from llama3.generation.params import SamplingParams

QUESTION = "What is the capital of France?"
MAX = 24


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def oracle_chat(smollm2, text, max_tokens=MAX, **kw):
    p = SamplingParams(temperature=0, max_tokens=max_tokens, **kw)
    return smollm2.chat([[{"role": "user", "content": text}]], p)[0]


def oracle_complete(smollm2, prompt, max_tokens=MAX, **kw):
    p = SamplingParams(temperature=0, max_tokens=max_tokens, **kw)
    return smollm2.complete([prompt], p)[0]


def test_models_list_names_the_served_model(client, server, smollm2_path):
    models = client.models.list().data
    assert [m.id for m in models] == [smollm2_path.stem]
    assert client.models.retrieve(smollm2_path.stem).id == smollm2_path.stem


def test_chat_matches_the_offline_model(client, model_id, smollm2):
    want = oracle_chat(smollm2, QUESTION)
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX,
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.system_fingerprint and r.created > 0 and r.model == model_id
    (c,) = r.choices
    assert c.message.role == "assistant"
    assert c.message.content == want.text
    assert "Paris" in c.message.content
    assert c.finish_reason == want.finish_reason == "stop"
    assert r.usage.prompt_tokens == len(want.prompt_tokens)
    assert r.usage.completion_tokens == len(want.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream(client, model_id):
    kw = dict(
        model=model_id,
        messages=[
            {"role": "system", "content": "You are a poet."},
            {"role": "user", "content": "Write about the sea."},
        ],
        temperature=0,
        max_tokens=40,
    )
    full = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 5  # streamed piece by piece, not in one block
    assert "".join(c.choices[0].delta.content for c in content) == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason == "length"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_completions_stream_and_not(client, model_id, smollm2):
    prompt = "The three primary colors are"
    want = oracle_complete(smollm2, prompt)
    r = client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=MAX)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(want.prompt_tokens)
    streamed = client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=MAX, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == want.text


def test_completions_default_to_16_tokens_and_token_prompts(client, model_id, smollm2):
    ids = smollm2.tokenizer.encode_prompt("Once upon a time")
    r = client.completions.create(model=model_id, prompt=ids, temperature=0)
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    assert r.choices[0].text == oracle_complete(smollm2, ids, max_tokens=16).text


def test_several_prompts_and_n(client, model_id, smollm2):
    prompts = ["One, two, three,", "Monday, Tuesday,"]
    r = client.completions.create(model=model_id, prompt=prompts, n=2, temperature=0, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        want = oracle_complete(smollm2, p, max_tokens=8).text
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == want
    assert r.usage.prompt_tokens == sum(len(smollm2.tokenizer.encode_prompt(p)) for p in prompts)
    assert r.usage.completion_tokens == 4 * 8


def test_stop_strings(client, model_id, smollm2):
    want = oracle_chat(smollm2, QUESTION).text
    cut = want.index("Paris")
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX,
        stop=["Paris", "never-appears"],
    )
    assert r.choices[0].message.content == want[:cut]
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client, model_id):
    kw = dict(
        model=model_id,
        messages=[{"role": "user", "content": "Tell me a story."}],
        temperature=1.0,
        max_tokens=30,
    )
    a = client.chat.completions.create(**kw, seed=1234, n=2)
    b = client.chat.completions.create(**kw, seed=1234, n=2)
    c = client.chat.completions.create(**kw, seed=99)
    texts_a = [ch.message.content for ch in a.choices]
    assert texts_a == [ch.message.content for ch in b.choices]
    assert texts_a[0] != texts_a[1]  # each choice has its own stream
    assert c.choices[0].message.content not in texts_a
    streamed = client.chat.completions.create(**kw, seed=1234, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == texts_a[0]


def test_chat_logprobs_match_the_model(client, model_id, smollm2):
    want = oracle_chat(smollm2, QUESTION, logprobs=3)
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    # the closing stop token is not part of the answer, so it has no entry
    assert len(content) == len(want.tokens) - 1
    assert [e.logprob for e in content] == pytest.approx(want.logprobs[:-1], abs=1e-4)
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token  # greedy picks the most likely
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert bytes(e.bytes).decode() == e.token


def test_completion_logprobs_and_echo(client, model_id, smollm2):
    prompt = "The capital of Italy is"
    want = oracle_complete(smollm2, prompt, max_tokens=6, logprobs=2)
    r = client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=6, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)
    echoed = client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=6, echo=True
    )
    assert echoed.choices[0].text == prompt + want.text
    # echo with logprobs: the prompt's own logprobs come first (the first token has none)
    want_echo = oracle_complete(smollm2, prompt, max_tokens=6, logprobs=2, echo=True)
    both = client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=6, logprobs=2, echo=True
    )
    lp = both.choices[0].logprobs
    n_prompt = len(want_echo.prompt_tokens)
    assert len(lp.tokens) == n_prompt + len(want_echo.tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:n_prompt] == pytest.approx(want_echo.prompt_logprobs[1:], abs=1e-4)
    assert lp.token_logprobs[n_prompt:] == pytest.approx(want_echo.logprobs, abs=1e-4)
    assert both.choices[0].text == prompt + want.text
    streamed = list(
        client.completions.create(
            model=model_id,
            prompt=prompt,
            temperature=0,
            max_tokens=6,
            logprobs=2,
            echo=True,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == prompt + want.text
    got = [
        x for c in streamed if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs
    ]
    assert got[0] is None and got[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)


def test_tokenize_and_detokenize(server, smollm2):
    text = "Hello, world! ünïcödé 🦙"
    r = server.post("/tokenize", {"prompt": text})
    assert r.status_code == 200
    assert r.json()["tokens"] == smollm2.tokenizer.encode_prompt(text)
    back = server.post("/detokenize", {"tokens": r.json()["tokens"]}).json()["prompt"]
    assert back.endswith(text)
    msgs = [{"role": "user", "content": QUESTION}]
    chat = server.post("/tokenize", {"messages": msgs}).json()
    assert chat["tokens"] == smollm2.formatter.encode_dialog_prompt(msgs)
