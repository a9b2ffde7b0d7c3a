"""`Llama.chat(tools=...)` and `llama3 chat --tools` with a tiny model forced to call a tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from forced_model import (  # noqa: E402
    TOOL_FINAL_TEXT,
    final_answer_bias,
    tool_call_model,
)

from llama3.generation.params import SamplingParams  # noqa: E402

SEARCH = {
    "type": "function",
    "function": {
        "name": "brave_search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, shared_llama3) -> Path:
    return tool_call_model(tmp_path_factory.mktemp("tools-api") / "forced")


def test_llama_chat_returns_parsed_calls_then_the_answer(model_path):
    from llama3 import Llama

    llm = Llama.load(model_path, device="cpu", max_seq_len=512, max_batch_size=1)
    greedy = SamplingParams(temperature=0, max_tokens=32)
    (r,) = llm.chat([USER], greedy, tools=[SEARCH])
    (call,) = r.message["tool_calls"]
    assert r.message["content"] is None
    assert call["function"]["name"] == "brave_search"
    assert json.loads(call["function"]["arguments"]) == {"query": "Paris weather"}
    history = [*USER, r.message, {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"}]
    biased = SamplingParams(temperature=0, max_tokens=32, logit_bias=final_answer_bias())
    (r2,) = llm.chat([history], biased, tools=[SEARCH])
    assert r2.message == {"role": "assistant", "content": TOOL_FINAL_TEXT}
    (plain,) = llm.chat([USER], greedy)  # no tools: the call text is just text
    assert "tool_calls" not in plain.message


def test_cli_chat_tools_prints_the_call_and_takes_the_result(model_path, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([SEARCH]))
    stdin = "Weather in Paris?\nline one of the result\nline two\n\n"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama3",
            "chat",
            "--model",
            str(model_path),
            "--tools",
            str(tools),
            "--temperature",
            "0",
            "--max-tokens",
            "32",
            "--max-seq-len",
            "1024",
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    call = '[tool call] brave_search {"query": "Paris weather"}'
    # the forced model calls again after every result (it cannot read one): the first result was
    # taken, the loop went on, and it stops after MAX_TOOL_ROUNDS answers
    from llama3.cli.chat import MAX_TOOL_ROUNDS

    assert lines == [call] * MAX_TOOL_ROUNDS
    assert "paste the result of brave_search" in p.stderr


def test_cli_chat_bad_tools_file(tmp_path):
    bad = tmp_path / "tools.json"
    bad.write_text('[{"type": "function", "function": {"name": "a b"}}]')
    p = subprocess.run(
        [sys.executable, "-m", "llama3", "chat", "--tools", str(bad)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])),
    )
    assert p.returncode != 0
    assert "not a valid function name" in p.stderr and "Traceback" not in p.stderr
