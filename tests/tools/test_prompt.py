"""Prompts with tools: Meta's Llama 3.1 layout against Meta's published built-in-tool prompt, and
the system-message fallback for templates without tool support (SmolLM2's ChatML).

Not here: a comparison with transformers' `apply_chat_template(tools=...)` on Meta's Llama 3.1
Instruct template. The tokenizer_config.json in ../shared/llama3 carries a 389-character template
without tools, so there is no tools template to compare against; the comparison is to be added
when the full template is available there."""

from __future__ import annotations

import json

from conftest import TOKENIZER_MODEL

from llama3.tokenizer.chat_format import ChatFormat
from llama3.tokenizer.chat_template import JinjaChatFormat
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
