"""Tool calling through the official `openai` client against a real `llama3 serve`.

A tiny forced model (tests/forced_model.py) always answers the built-in call
`<|python_tag|>brave_search.call(query="Paris weather")<|eom_id|>`; a logit bias on its second
chain's first token makes it give the final answer after the tool result. SmolLM2 (the default
server) shows `tool_choice` "required" / named enforced by constrained decoding.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from forced_model import (  # noqa: E402
    TOOL_CALL_TEXT,
    TOOL_FINAL_TEXT,
    final_answer_bias,
    tool_call_model,
)
from server import ServerProcess  # noqa: E402

from llama3.tokenizer import Tokenizer  # noqa: E402

TOK = Tokenizer()
SPECIAL = TOK.special_tokens
CALL_TEXT = TOOL_CALL_TEXT
FINAL = TOOL_FINAL_TEXT
SEARCH = {
    "type": "function",
    "function": {
        "name": "brave_search",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _ids(text: str) -> list[int]:
    return TOK.encode(text, bos=False, eos=False)


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    path = tool_call_model(tmp_path_factory.mktemp("tools") / "forced")
    s = ServerProcess(
        model=path, served_model_name="m", max_model_len=2048, kv_cache_memory="32MiB"
    ).start()
    yield s, openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
    s.stop()


@pytest.fixture(scope="module")
def smol(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    return client, client.models.list().data[0].id


def _final_bias() -> dict[str, float]:
    return {str(k): v for k, v in final_answer_bias().items()}


def test_tool_loop(forced):
    _, client = forced
    r = client.chat.completions.create(model="m", messages=USER, tools=[SEARCH], temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "brave_search"
    assert json.loads(call.function.arguments) == {"query": "Paris weather"}

    result = "Sunny, 24 degrees, light wind from the west"
    history = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    r2 = client.chat.completions.create(
        model="m", messages=history, tools=[SEARCH], temperature=0, logit_bias=_final_bias()
    )
    assert r2.choices[0].finish_reason == "stop", r2.choices[0].message
    assert r2.choices[0].message.content == FINAL
    assert not r2.choices[0].message.tool_calls
    # the call and its result are in the prompt
    assert r2.usage.prompt_tokens >= r.usage.prompt_tokens + len(_ids(result)) + len(
        _ids(CALL_TEXT)
    )


def test_streamed_tool_call_assembles_to_the_same_call(forced):
    _, client = forced
    whole = client.chat.completions.create(
        model="m", messages=USER, tools=[SEARCH], temperature=0, n=2
    )
    stream = client.chat.completions.create(
        model="m", messages=USER, tools=[SEARCH], temperature=0, n=2, stream=True
    )
    calls: dict[int, dict[int, dict]] = {0: {}, 1: {}}
    content = {0: "", 1: ""}
    finish = {}
    for chunk in stream:
        for c in chunk.choices:
            content[c.index] += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                slot = calls[c.index].setdefault(tc.index, {"name": "", "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    for j in (0, 1):
        assert content[j] == ""
        want = whole.choices[j].message.tool_calls
        assert whole.choices[j].finish_reason == "tool_calls"
        got = calls[j]
        assert [(g["name"], json.loads(g["arguments"])) for g in got.values()] == [
            (w.function.name, json.loads(w.function.arguments)) for w in want
        ]
        assert all(g["id"].startswith("call_") for g in got.values())


def test_tool_choice_none_leaves_the_text(forced):
    _, client = forced
    r = client.chat.completions.create(
        model="m", messages=USER, tools=[SEARCH], tool_choice="none", temperature=0
    )
    assert r.choices[0].message.content == CALL_TEXT
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls


def test_unknown_function_is_content(forced):
    _, client = forced
    r = client.chat.completions.create(model="m", messages=USER, tools=[WEATHER], temperature=0)
    assert r.choices[0].message.content == CALL_TEXT
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [SEARCH], "tool_choice": "always"}, "tool_choice"),
        (
            {"tools": [SEARCH], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "tag",
                            "parameters": {
                                "type": "object",
                                "properties": {"t": {"type": "array", "uniqueItems": True}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {
                "tools": [SEARCH],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
    ],
)
def test_bad_requests_are_400_with_param(forced, extra, param):
    s, _ = forced
    r = s.post("/v1/chat/completions", {"messages": USER, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# ---- SmolLM2: constrained calls and mixed batches ---------------------------------------------------
def _args_valid(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_call_is_valid(smol, choice):
    smol, name = smol
    r = smol.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER, SEARCH] if choice == "required" else [SEARCH, WEATHER],
        tool_choice=choice,
        temperature=1.0,
        seed=3,
        max_tokens=64,
        parallel_tool_calls=False,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c.message
    (call,) = c.message.tool_calls
    if call.function.name == "get_weather" or choice != "required":
        assert call.function.name == "get_weather"
        _args_valid(call)
    else:
        jsonschema.validate(json.loads(call.function.arguments), SEARCH["function"]["parameters"])


def test_mixed_batch_equals_each_alone(smol):
    smol, name = smol
    base = {"model": name, "temperature": 0, "max_tokens": 32, "seed": 1}
    reqs = [
        {
            **base,
            "messages": [{"role": "user", "content": "Weather in Rome?"}],
            "tools": [WEATHER],
            "tool_choice": "required",
        },
        {**base, "messages": [{"role": "user", "content": "Say hi."}]},
        {**base, "messages": [{"role": "user", "content": "Weather in Lima?"}], "tools": [WEATHER]},
        {
            **base,
            "messages": [{"role": "user", "content": "A person as JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "p",
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 10}},
                        "required": ["name"],
                    },
                },
            },
        },
    ]

    def run(kw):
        m = smol.chat.completions.create(**kw).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in m.message.tool_calls or []]
        return m.message.content, calls, m.finish_reason

    alone = [run(kw) for kw in reqs]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(run, reqs))
    assert together == alone
    assert alone[0][2] == "tool_calls"
