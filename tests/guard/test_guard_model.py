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


def test_checks_reuse_the_shared_prompt_prefix_and_agree_with_plain_generation(unsafe):
    from llama3.guard.guard import MAX_VERDICT_TOKENS
    from llama3.guard.prompt import encode

    g = Guard(unsafe)
    other = [{"role": "user", "content": "And what about chlorine?"}]
    first = g.classify(CONV, role="User")
    stats = g._prompts_engine().stats()
    hits_before = stats.prefix_cache_hit_tokens
    second = g.classify(other, role="User")
    reused = g._prompts_engine().stats().prefix_cache_hit_tokens - hits_before
    # the task and category list (everything before the conversation) is computed once
    ids_a = encode(unsafe.tokenizer, 3, CONV, g.categories, "User")
    ids_b = encode(unsafe.tokenizer, 3, other, g.categories, "User")
    shared = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b)
    assert shared > 100 and reused == shared // 16 * 16, (shared, reused)
    # the prefix-cached engine answers as plain generation does
    from llama3 import SamplingParams

    plain = unsafe.complete([ids_b], SamplingParams(temperature=0, max_tokens=MAX_VERDICT_TOKENS))
    assert second.raw == plain[0].text and first.raw == "unsafe\nS2"
