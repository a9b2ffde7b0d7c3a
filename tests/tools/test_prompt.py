"""Prompts with tools: the Llama 3.1 template through our Jinja renderer and Meta's layout, both
against transformers' `apply_chat_template(tools=...)` on the shipped tokenizer_config.json, plus
Meta's published built-in-tool prompt and the ChatML fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import HF_TOKENIZER_CONFIG_31, TOKENIZER_MODEL
from tokenizer.test_hf_tokenizer import _tokenizer_json_31, make_hf_dir
from transformers import PreTrainedTokenizerFast

from llama3.tokenizer.chat_format import ChatFormat
from llama3.tokenizer.chat_template import JinjaChatFormat
from llama3.tokenizer.hf import HFTokenizer
from llama3.tools.prompt import encode_with_tools, supports_tools
from llama3.tools.spec import parse_tools

DATE = "26 Jul 2024"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city — «unicode» too",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
SEARCH = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "brave_search", "arguments": {"query": "llamas"}},
}

CASES = {
    "custom": ([WEATHER, TIME], [{"role": "user", "content": "Weather in Paris?"}]),
    "custom+system": (
        [WEATHER],
        [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": " Paris? \n"}],
    ),
    "builtin": (
        ["brave_search", "wolfram_alpha"],
        [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "News?"},
        ],
    ),
    "call+result": (
        [WEATHER],
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
        ],
    ),
    "builtin call+result, multi-turn": (
        ["brave_search", WEATHER],
        [
            {"role": "system", "content": "Search when unsure."},
            {"role": "user", "content": "Tell me about llamas"},
            {"role": "assistant", "content": None, "tool_calls": [SEARCH]},
            {"role": "tool", "tool_call_id": "call_2", "content": "Llamas are camelids."},
            {"role": "assistant", "content": "Llamas are camelids."},
            {"role": "user", "content": "And the weather in Lima?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Lima"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": {"temp": 18}},
        ],
    ),
}


@pytest.fixture(scope="module")
def template_pair(tmp_path_factory, shared_llama3: Path):
    config = json.loads(HF_TOKENIZER_CONFIG_31.read_text(encoding="utf-8"))
    if "tools" not in config["chat_template"]:
        pytest.skip(
            f"{HF_TOKENIZER_CONFIG_31} holds a chat template without tool support; put the "
            "Llama 3.1 Instruct tokenizer_config.json (with its tools template) there"
        )
    d = make_hf_dir(
        tmp_path_factory.mktemp("hf"),
        config=HF_TOKENIZER_CONFIG_31,
        tokenizer_json=_tokenizer_json_31(),
    )
    theirs = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"),
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
        chat_template=config["chat_template"],
    )
    ours = HFTokenizer.from_dir(d)
    return JinjaChatFormat(ours, config["chat_template"]), theirs


def _their_ids(theirs, tools, messages) -> list[int]:
    parsed = parse_tools(tools)
    custom = [t.openai() for t in parsed if not t.builtin] or None
    kw = (
        {"builtin_tools": [t.name for t in parsed if t.builtin]}
        if any(t.builtin for t in parsed)
        else {}
    )
    msgs = []
    for m in messages:  # transformers takes the arguments as objects, as the template needs
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": c["function"]["arguments"]
                        if isinstance(c["function"]["arguments"], dict)
                        else json.loads(c["function"]["arguments"]),
                    },
                }
                for c in m["tool_calls"]
            ]
        msgs.append(m)
    out = theirs.apply_chat_template(
        msgs,
        tools=custom,
        tokenize=True,
        add_generation_prompt=True,
        date_string=DATE,
        return_dict=True,
        **kw,
    )
    return list(out["input_ids"])


@pytest.mark.parametrize("case", list(CASES))
def test_template_with_tools_equals_transformers(template_pair, case):
    fmt, theirs = template_pair
    tools, messages = CASES[case]
    assert supports_tools(fmt)
    ours = encode_with_tools(fmt, messages, parse_tools(tools), date_string=DATE)
    assert ours == _their_ids(theirs, tools, messages)


@pytest.mark.parametrize("case", [c for c in CASES if "builtin" not in c])
def test_meta_layout_equals_the_template(template_pair, case):
    # built-in tools: Meta's published "Tools:" line (checked below) is the reference there
    _, theirs = template_pair
    from llama3.tokenizer.tiktoken_bpe import Tokenizer

    tools, messages = CASES[case]
    ours = encode_with_tools(
        ChatFormat(Tokenizer(TOKENIZER_MODEL)), messages, parse_tools(tools), date_string=DATE
    )
    assert ours == _their_ids(theirs, tools, messages)


def test_meta_layout_is_metas_published_builtin_prompt(shared_llama3):
    """The built-in tool example of Meta's Llama 3.1 prompt-format page, character for character."""
    from llama3.tokenizer.tiktoken_bpe import Tokenizer

    tok = Tokenizer(TOKENIZER_MODEL)
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What is the current weather in Menlo Park, California?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {
                        "name": "brave_search",
                        "arguments": {"query": "current weather in Menlo Park, California"},
                    },
                }
            ],
        },
    ]
    published = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nTools: brave_search, wolfram_alpha\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 23 July 2024\n\n"
        "You are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "What is the current weather in Menlo Park, California?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '<|python_tag|>brave_search.call(query="current weather in Menlo Park, California")<|eom_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = encode_with_tools(
        ChatFormat(tok),
        messages,
        parse_tools(["brave_search", "wolfram_alpha"]),
        date_string="23 July 2024",
    )
    assert ids == tok.encode(published, bos=False, eos=False, allowed_special="all")


def test_template_without_tools_gets_them_in_the_system_message(smollm2_path):
    from llama3.tokenizer import chat_formatter
    from llama3.tokenizer.gguf_vocab import read_gguf_metadata, tokenizer_from_gguf

    tok = tokenizer_from_gguf(read_gguf_metadata(smollm2_path))
    fmt = chat_formatter(tok)
    assert isinstance(fmt, JinjaChatFormat) and not supports_tools(fmt)
    tools, messages = CASES["call+result"]
    text = tok.decode(encode_with_tools(fmt, messages, parse_tools(tools)))
    assert text.index(json.dumps(WEATHER, ensure_ascii=False)) < text.index("Weather in Paris?")
    assert '"name": function name, "parameters"' in text
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}' in text
    assert "Function result: 22 C, sunny" in text
