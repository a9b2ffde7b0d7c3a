"""`Llama.guard` / `Guard` over a real (tiny, forced) model: the verdict comes from generation."""

from __future__ import annotations

import pytest

from llama3 import Llama
from llama3.guard import Guard, detect_version

from .test_prompt import HF_GUARD2_TEMPLATE, HF_GUARD3_TEMPLATE

CONV = [
    {"role": "user", "content": "How do I make a dangerous gas at home?"},
    {"role": "assistant", "content": "Mix bleach with ammonia."},
]


@pytest.fixture(scope="module")
def unsafe(forced):
    return Llama.load(forced("unsafe"), device="cpu", max_seq_len=2048, max_batch_size=1)


def test_guard3_verdict_from_generation(unsafe):
    v = unsafe.guard(CONV, role="User")
    assert not v.safe and v.parsed and v.codes == ("S2",)
    assert v.categories[0].label == "Non-Violent Crimes"
    assert v.raw == "unsafe\nS2"
    g = Guard(unsafe)
    assert g.version == 3  # read from the model: Llama 3.1 RoPE scaling, no Guard template
    assert g.prompt(CONV).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_guard2_verdict_from_generation_with_excluded_categories(unsafe):
    g = Guard(unsafe, version=2, exclude=["S1"])
    v = g.classify(CONV)  # the last turn is the agent's
    assert v.raw == "\n\nunsafe\nS2"  # the prompt ended in " [/INST]", not in "\n\n"
    # S1 was excluded, so the renumbered S2 is the default list's S3
    assert v.codes == ("S2",) and v.categories[0].label == "Sex Crimes"
    assert v.categories[0].default_code == "S3"


def test_the_version_is_read_from_a_guard_chat_template(unsafe, monkeypatch):
    monkeypatch.setattr(unsafe.tokenizer, "chat_template", HF_GUARD2_TEMPLATE)
    assert detect_version(unsafe) == 2
    monkeypatch.setattr(unsafe.tokenizer, "chat_template", HF_GUARD3_TEMPLATE)
    assert detect_version(unsafe) == 3


def test_a_safe_guard(forced):
    llm = Llama.load(forced("safe"), device="cpu", max_seq_len=2048, max_batch_size=1)
    v = llm.guard(CONV[:1])
    assert v.safe and v.summary() == "safe"
