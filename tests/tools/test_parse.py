"""The answer parser on every call form, and the streaming parser against it at every split."""

from __future__ import annotations

import json

import pytest

from llama3.errors import InvalidRequestError
from llama3.tools.choice import tool_plan
from llama3.tools.parse import parse_answer, restore_specials
from llama3.tools.spec import parse_tools
from llama3.tools.stream import StreamParser

NAMES = ["get_weather", "brave_search", "wolfram_alpha", "code_interpreter"]

CALLS = [
    # (answer text, expected [(name, arguments)], expected content)
    (
        '<|python_tag|>brave_search.call(query="weather in Menlo Park")<|eom_id|>',
        [("brave_search", {"query": "weather in Menlo Park"})],
        None,
    ),
    ('brave_search.call(query="x")', [("brave_search", {"query": "x"})], None),
    (
        '<|python_tag|>wolfram_alpha.call(query="solve x^2 = 4")',
        [("wolfram_alpha", {"query": "solve x^2 = 4"})],
        None,
    ),
    (
        "<|python_tag|>print(1 + 1)<|eom_id|>",
        [("code_interpreter", {"code": "print(1 + 1)"})],
        None,
    ),
    (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        [("get_weather", {"city": "Paris", "days": 2})],
        None,
    ),
    (
        '  {"name": "get_weather", "arguments": {"city": "Oslo"}}\n',
        [("get_weather", {"city": "Oslo"})],
        None,
    ),
    (
        '{"name": "get_weather", "parameters": {"city": "A"}}; {"name": "get_weather", "parameters": {"city": "B;C"}}',
        [("get_weather", {"city": "A"}), ("get_weather", {"city": "B;C"})],
        None,
    ),
    (
        '{"name": "get_weather", "parameters": {"city": "A"}}\n{"name": "brave_search", "parameters": {"query": "q"}}',
        [("get_weather", {"city": "A"}), ("brave_search", {"query": "q"})],
        None,
    ),
    (
        '[{"name": "get_weather", "parameters": {"city": "A"}}, {"name": "get_weather", "parameters": {}}]',
        [("get_weather", {"city": "A"}), ("get_weather", {})],
        None,
    ),
    (
        '[get_weather(city="Paris", days=3), brave_search(query="x y")]',
        [("get_weather", {"city": "Paris", "days": 3}), ("brave_search", {"query": "x y"})],
        None,
    ),
    (
        "[get_weather(tags=['a', 'b'], on=True)]",
        [("get_weather", {"tags": ["a", "b"], "on": True})],
        None,
    ),
    (
        'Let me look. <|python_tag|>brave_search.call(query="q")',
        [("brave_search", {"query": "q"})],
        "Let me look.",
    ),
    (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}<|eom_id|>',
        [("get_weather", {"city": "Rome"})],
        None,
    ),
]

NOT_CALLS = [
    "The weather is sunny.",
    "[1] see the footnote",
    '{"name": "unknown_fn", "parameters": {}}',  # a function nobody offered
    '{"name": "get_weather", "parameters": {"city": "Par',  # cut off
    '{"name": "get_weather", "parameters": "not json"}',
    '{"city": "Paris"}',
    "[get_weather(city=open('/etc/passwd').read())]",  # not a literal: never evaluated
    "[get_weather('positional')]",
    "[unknown(a=1)]",
    '{"name": "get_weather", "parameters": {}} trailing words',
    "{}",
    "[]",
    "",
]


def _pairs(calls):
    return [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize(("text", "calls", "content"), CALLS)
def test_calls_are_parsed(text, calls, content):
    got = parse_answer(text, NAMES)
    assert _pairs(got.calls) == calls
    assert got.content == content
    assert got.finish_reason == "tool_calls"
    for c in got.calls:
        assert c.id.startswith("call_")
        assert json.loads(c.openai()["function"]["arguments"]) == c.arguments


@pytest.mark.parametrize("text", NOT_CALLS)
def test_other_text_stays_content(text):
    got = parse_answer(text, NAMES)
    assert got.calls == []
    assert got.content == text
    assert got.finish_reason is None


def test_no_tools_means_no_calls():
    text = '{"name": "get_weather", "parameters": {}}'
    assert parse_answer(text, []).content == text


def test_parallel_false_keeps_the_first_call():
    text = '[get_weather(city="A"), get_weather(city="B")]'
    assert _pairs(parse_answer(text, NAMES, parallel=False).calls) == [
        ("get_weather", {"city": "A"})
    ]


def test_restore_specials():
    assert restore_specials("", 10, 10, 8) == "<|python_tag|>"
    assert restore_specials("", 8, 10, 8) == "<|eom_id|>"
    assert restore_specials("ab", 5, 10, 8) == "ab"


def _stream(text: str, cuts: list[int]):
    sp = StreamParser(NAMES)
    deltas = []
    pos = 0
    for c in [*cuts, len(text)]:
        deltas += sp.feed(text[pos:c])
        pos = c
    tail, is_call = sp.finish()
    return deltas + tail, is_call


def _assemble(deltas):
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            slot = calls.setdefault(tc["index"], {"name": "", "arguments": "", "id": None})
            if "id" in tc:
                assert slot["id"] is None, "id sent twice"
                assert tc["type"] == "function" and tc["function"]["arguments"] == ""
                slot["id"] = tc["id"]
            slot["name"] += tc["function"].get("name", "")
            slot["arguments"] += tc["function"].get("arguments", "")
    return content, [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]


@pytest.mark.parametrize("text", [t for t, _, _ in CALLS] + NOT_CALLS)
def test_stream_equals_whole_parse_at_every_split(text):
    whole = parse_answer(text, NAMES)
    splits = [[i] for i in range(len(text) + 1)] + [list(range(1, len(text)))]
    for cuts in splits:
        deltas, is_call = _stream(text, cuts)
        content, calls = _assemble(deltas)
        assert is_call == bool(whole.calls)
        assert calls == _pairs(whole.calls), cuts
        if whole.calls:
            assert content.strip() == (whole.content or ""), cuts
        else:
            assert content == whole.content, cuts


def test_stream_releases_plain_text_early():
    sp = StreamParser(NAMES)
    assert sp.feed("Hello") == [{"content": "Hello"}]
    assert sp.feed(" world") == [{"content": " world"}]
    assert sp.feed('{"name"') == [{"content": '{"name"'}]  # mid-answer JSON is text


def test_stream_holds_a_possible_call():
    sp = StreamParser(NAMES)
    assert sp.feed('{"name": "get_') == []
    assert sp.feed("brave_search.call(") == []


# ---- tool definitions and tool_choice --------------------------------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        ("get_weather", "must be a list"),
        ([1], "tools[0] must be an object"),
        ([{"type": "code"}], "only 'function'"),
        ([{"type": "function"}], "function is missing"),
        ([{"type": "function", "function": {"name": "bad name"}}], "not a valid function name"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON schema object"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            "type 'object'",
        ),
        ([WEATHER, WEATHER], "defined twice"),
    ],
)
def test_bad_tools_name_the_problem(tools, words):
    with pytest.raises(InvalidRequestError) as e:
        parse_tools(tools)
    assert words in e.value.message and e.value.param == "tools"


@pytest.mark.parametrize(
    ("tools", "choice", "words"),
    [
        ([WEATHER], "sometimes", "unknown tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
        ([WEATHER], {"type": "function"}, "must be {'type'"),
        (None, "required", "needs tools"),
        ([WEATHER], 3, "string or an object"),
    ],
)
def test_bad_tool_choice(tools, choice, words):
    with pytest.raises(InvalidRequestError) as e:
        tool_plan(tools, choice)
    assert words in e.value.message and e.value.param == "tool_choice"


def test_plans():
    assert tool_plan([WEATHER]).choice == "auto" and tool_plan([WEATHER]).guided() is None
    none = tool_plan([WEATHER], "none")
    assert none.offered == () and not none.parses
    named = tool_plan([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    schema = named.guided().json_schema
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["parameters"] == WEATHER["function"]["parameters"]
    assert not tool_plan([WEATHER], parallel=False).parallel
