"""`llama3 chat` driven through a pseudo-terminal with the real SmolLM2 model, as a user types."""

from __future__ import annotations

import json
import re
import sys
import time

import pexpect
import pytest

PROMPT = "\r\n> "
STATUS = re.compile(r"\[(\d+) tokens, ([\d.]+) tok/s, context (\d+)/(\d+)\]")


def spawn(*extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llama3", "chat", "--max-seq-len", "1024", *extra],
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    child.expect("/help for commands")
    child.expect("> ")
    return child


def context_used(child: pexpect.spawn) -> int:
    child.sendline("/stats")
    child.expect(r"context (\d+)/1024 tokens")
    n = int(child.match.group(1))
    child.expect("> ")
    return n


@pytest.fixture(scope="module")
def child():
    c = spawn("--temperature", "0", "--max-tokens", "48")
    yield c
    c.close(force=True)


def test_answer_streams_before_it_is_complete(child):
    child.sendline("Tell me a long story about a llama who learns to fly.")
    child.expect(r"Tell me a long story about a llama who learns to fly\.\r\n")
    child.expect(r"\w")  # the first characters of the answer
    t_first = time.monotonic()
    child.expect(STATUS)
    t_done = time.monotonic()
    n, rate = int(child.match.group(1)), float(child.match.group(2))
    assert n > 10
    # the text was on screen well before the answer ended: at least half the decoding time
    # (a printed-at-the-end answer would show its first and last characters together)
    assert t_done - t_first > 0.5 * (n - 1) / rate
    child.expect("> ")


def test_context_grows_with_history_and_reset_brings_it_back(child):
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("> ")
    child.sendline("What is the capital of France?")
    child.expect(STATUS)
    first = int(child.match.group(3))
    child.expect("> ")
    assert context_used(child) == first
    child.sendline("And of Germany?")
    child.expect(STATUS)
    second = int(child.match.group(3))
    child.expect("> ")
    assert second > first
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("> ")
    assert context_used(child) < first


def test_set_save_load(child, tmp_path):
    child.sendline("/set temperature=0.2 top_p=0.8")
    child.expect("temperature=0.2 top_p=0.8")
    child.expect("> ")
    child.sendline("/set temperature=hot")
    child.expect("error: temperature: 'hot' is not a valid float")
    child.expect("> ")
    child.sendline("/set top_p=7")
    child.expect("error: top_p must be in")
    child.expect("> ")
    child.sendline("/set temperature=0")
    child.expect("> ")
    child.sendline("/reset")
    child.expect("> ")
    child.sendline("Name a colour.")
    child.expect(STATUS)
    child.expect("> ")
    f = tmp_path / "chat.json"
    child.sendline(f"/save {f}")
    child.expect("saved 2 messages")
    child.expect("> ")
    saved = json.loads(f.read_text())
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[0][
        "content"
    ] == "Name a colour."
    child.sendline("/reset")
    child.expect("> ")
    child.sendline(f"/load {f}")
    child.expect("loaded 2 messages")
    child.expect("> ")
    assert context_used(child) > 10
    bad = tmp_path / "bad.json"
    bad.write_text('{"role": "user"}')
    child.sendline(f"/load {bad}")
    child.expect("is not a list of")
    child.expect("> ")
    child.sendline("/nope")
    child.expect("unknown command /nope")
    child.expect("> ")


def test_ctrl_c_stops_the_answer_and_keeps_the_session():
    c = spawn("--temperature", "0", "--max-tokens", "400")
    try:
        c.sendline("Write a very long essay about the history of the llama.")
        c.expect(r"llama\.\r\n")
        c.expect(r"\w+ \w+ \w+")  # some words have streamed
        c.sendintr()
        c.expect(r"\[interrupted\]")
        c.expect(STATUS)
        assert int(c.match.group(1)) < 400
        c.expect("> ")
        c.sendline("/stats")
        c.expect(r"messages 2, ")  # the question and the partial answer were kept
        c.expect("> ")
        c.sendcontrol("d")  # Ctrl-D quits cleanly
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 0
    finally:
        c.close(force=True)


def test_context_overflow_drops_oldest_turns_with_a_notice():
    c = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "llama3",
            "chat",
            "--max-seq-len",
            "256",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--system",
            "Be brief.",
        ],
        encoding="utf-8",
        timeout=120,
    )
    try:
        c.expect("> ")
        for i in range(6):
            c.sendline(f"Question {i}: tell me one fact about the number {i}.")
            c.expect(STATUS)
            assert int(c.match.group(3)) <= 256
            c.expect("> ")
        c.sendline("One more question about numbers, please.")
        c.expect(r"dropped the \d+ oldest message")
        c.expect(STATUS)
        c.expect("> ")
        c.sendline("/exit")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
