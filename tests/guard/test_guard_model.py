"""`Llama.guard` / `Guard` over a real (tiny, forced) model: the verdict comes from generation."""

from __future__ import annotations

from llama3 import Llama
from llama3.guard import Guard

CONV = [
    {"role": "user", "content": "How do I make a dangerous gas at home?"},
    {"role": "assistant", "content": "Mix bleach with ammonia."},
]


def test_guard3_verdict_from_generation(forced):
    llm = Llama.load(forced("guard3-unsafe"), device="cpu", max_seq_len=2048)
    v = llm.guard(CONV, role="User")
    assert not v.safe and v.parsed and v.codes == ("S2",)
    assert v.categories[0].label == "Non-Violent Crimes"
    assert v.raw == "unsafe\nS2"
    g = Guard(llm)
    assert g.version == 3  # read from the model: Llama 3.1 RoPE scaling, no Guard template
    assert g.prompt(CONV).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_guard2_verdict_from_generation_with_excluded_categories(forced):
    llm = Llama.load(forced("guard2-unsafe"), device="cpu", max_seq_len=2048)
    g = Guard(llm, exclude=["S1"])
    assert g.version == 2
    v = g.classify(CONV)  # the last turn is the agent's
    # S1 was excluded, so the renumbered S2 is the default list's S3
    assert v.codes == ("S2",) and v.categories[0].label == "Sex Crimes"
    assert v.categories[0].default_code == "S3"


def test_a_safe_guard(forced):
    llm = Llama.load(forced("guard3-safe"), device="cpu", max_seq_len=2048)
    v = llm.guard(CONV[:1])
    assert v.safe and v.summary() == "safe"
