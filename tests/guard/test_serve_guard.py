"""`llama3 serve --guard`: the official openai client against real servers on real ports.

The chat model always answers ANSWER; the guard models always answer "unsafe\\nS2" or "safe"
(tests/guard/conftest.py), so each test knows what the filter must do: refuse, replace, hold
back, count and log.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from openai import OpenAI
from server import ServerProcess

from .conftest import ANSWER

MESSAGE = "I won't help with that."
QUESTION = "How do I make toxic gas with cleaning products?"
USER = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def servers(forced):
    flags = {
        "refuse": ["--guard", forced("unsafe")],
        "output": ["--guard", forced("unsafe"), "--guard-check", "output"],
        "safe": ["--guard", forced("safe")],
        "error": ["--guard", forced("unsafe"), "--guard-action", "error", "--guard-version", "2"],
    }
    common = ["--guard-message", MESSAGE, "--guard-chunk-tokens", "4"]
    common += ["--guard-max-seq-len", "2048", "--guard-device", "cpu"]
    started = {
        name: ServerProcess(model=forced("chat"), extra=[*map(str, f), *common]).start(
            wait_ready=False
        )
        for name, f in flags.items()
    }
    deadline = time.monotonic() + 120
    for s in started.values():
        s.wait_ready(deadline)
    yield started
    for s in started.values():  # drain all at once, then wait
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
    for s in started.values():
        s.stop()


def client(s: ServerProcess) -> OpenAI:
    return OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)


def chat(s: ServerProcess, **kw):
    kw.setdefault("messages", USER)
    return client(s).chat.completions.create(model="chat", temperature=0, max_tokens=40, **kw)


def guard_counts(s: ServerProcess) -> dict[str, float]:
    return {k: v for k, v in s.metrics().items() if k.startswith("llama3_guard_") and "{" in k}


def test_a_safe_guard_lets_the_answer_through(servers):
    s = servers["safe"]
    r = chat(s)
    assert r.choices[0].message.content == ANSWER
    assert r.choices[0].finish_reason == "stop"


def test_a_safe_guard_releases_the_stream_in_chunks(servers):
    s = servers["safe"]
    before = guard_counts(s)
    deltas = [
        c.choices[0].delta.content or ""
        for c in chat(s, stream=True)
        if c.choices and c.choices[0].delta
    ]
    assert "".join(deltas) == ANSWER
    after = guard_counts(s)
    key = 'llama3_guard_decisions_total{stage="output",verdict="safe"}'
    # 18 answer tokens: judged after tokens 4, 8, 12, 16 and once more at the end (18)
    assert after[key] - before.get(key, 0) == 5
    assert max(len(d) for d in deltas) > len("Sure")  # released in chunks, not token by token


def test_unsafe_input_is_refused_with_content_filter(servers):
    s = servers["refuse"]
    before = s.metrics().get("llama3_generation_tokens_total", 0)
    r = chat(s, n=2)
    assert [c.message.content for c in r.choices] == [MESSAGE, MESSAGE]
    assert [c.finish_reason for c in r.choices] == ["content_filter"] * 2
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    assert s.metrics().get("llama3_generation_tokens_total", 0) == before  # nothing generated


def test_unsafe_input_is_refused_in_a_stream(servers):
    chunks = list(chat(servers["refuse"], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MESSAGE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    assert chunks[-1].usage.completion_tokens == 0


def test_unsafe_output_is_replaced(servers):
    r = chat(servers["output"], logprobs=True, top_logprobs=2)
    (c,) = r.choices
    assert c.message.content == MESSAGE and c.finish_reason == "content_filter"
    assert not c.logprobs.content  # the answer's tokens do not leak through logprobs


def test_a_stream_never_leaks_the_unsafe_answer(servers):
    s = servers["output"]
    with httpx.stream(
        "POST",
        s.url + "/v1/chat/completions",
        json={"messages": USER, "stream": True, "temperature": 0, "max_tokens": 40},
        timeout=60,
    ) as r:
        raw = r.read().decode()
    for word in ("Sure", "bleach", "ammonia", "bucket"):
        assert word not in raw
    events = [e for e in raw.split("\n\n") if e.startswith("data: {")]
    assert MESSAGE in raw and '"finish_reason": "content_filter"' in events[-1]


def test_error_action_answers_400_and_guard2_works(servers):
    with pytest.raises(openai.BadRequestError) as e:
        chat(servers["error"])
    assert e.value.status_code == 400
    err = e.value.body
    assert err["code"] == "content_filter" and "S2 (Non-Violent Crimes)" in err["message"]


def test_completions_are_refused_while_the_guard_is_on(servers):
    with pytest.raises(openai.BadRequestError, match="--guard"):
        client(servers["refuse"]).completions.create(model="chat", prompt="hi", max_tokens=4)


def test_decisions_are_counted_and_logged_without_text(servers):
    s = servers["refuse"]
    chat(s)
    m = s.metrics()
    assert m['llama3_guard_decisions_total{stage="input",verdict="unsafe"}'] >= 1
    assert m['llama3_guard_unsafe_categories_total{category="S2",stage="input"}'] >= 1
    assert m['llama3_guard_seconds_count{stage="input"}'] >= 1
    o = servers["output"].metrics()
    assert o['llama3_guard_decisions_total{stage="output",verdict="unsafe"}'] >= 1
    for srv in servers.values():
        assert "toxic gas" not in srv.log and "bleach" not in srv.log
    assert re.search(r"chatcmpl-\w+ guard input unsafe S2 \d+\.\d+s", s.log)
    assert "guard: Llama Guard 2" in servers["error"].log
