"""Parsing Llama Guard's answer on every form its model cards and chat templates document."""

from __future__ import annotations

import pytest

from llama3.guard import parse_verdict, select

G3 = select(3)


@pytest.mark.parametrize("text", ["safe", "\n\nsafe", " safe \n", "Safe", "safe<|eot_id|>"[:4]])
def test_safe(text):
    v = parse_verdict(text, G3)
    assert v.safe and v.parsed and v.categories == () and v.summary() == "safe"


@pytest.mark.parametrize(
    ("text", "codes", "labels"),
    [
        ("unsafe\nS1", ("S1",), ["Violent Crimes"]),
        ("\n\nunsafe\nS2", ("S2",), ["Non-Violent Crimes"]),
        ("unsafe\nS1,S10", ("S1", "S10"), ["Violent Crimes", "Hate"]),
        ("UNSAFE\n s14 , S5 \n", ("S14", "S5"), ["Code Interpreter Abuse", "Defamation"]),
        ("unsafe\r\nS3", ("S3",), ["Sex Crimes"]),
        ("unsafe S9", ("S9",), ["Indiscriminate Weapons"]),
        ("unsafe\nS1,S1", ("S1",), ["Violent Crimes"]),
    ],
)
def test_unsafe_with_categories(text, codes, labels):
    v = parse_verdict(text, G3)
    assert not v.safe and v.parsed
    assert v.codes == codes
    assert [c.label for c in v.categories] == labels


def test_unsafe_without_a_code_line():
    v = parse_verdict("unsafe", G3)
    assert not v.safe and v.parsed and v.categories == () and v.summary() == "unsafe"


def test_a_code_outside_the_list_is_kept_as_unknown():
    v = parse_verdict("unsafe\nS2,S15", G3)
    assert not v.safe and v.codes == ("S2", "S15")
    assert v.categories[1].label == "unknown category"


def test_custom_categories_map_back_to_their_names():
    cats = select(2, exclude=["S1"], add=["Profanity."])
    v = parse_verdict("unsafe\nS11", cats)
    assert v.categories[0].label == "Profanity" and v.categories[0].default_code is None
    v = parse_verdict("unsafe\nS1", cats)
    assert v.categories[0].label == "Non-Violent Crimes" and v.categories[0].default_code == "S2"


@pytest.mark.parametrize(
    "text", ["", "   \n", "I cannot classify this.", "sa", "safe to say", "unsafe\nviolence"]
)
def test_anything_else_fails_closed(text):
    v = parse_verdict(text, G3)
    assert not v.safe and not v.parsed and v.raw == text
    assert "failing closed" in v.summary()
