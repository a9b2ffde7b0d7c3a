"""Reading Llama Guard's answer: `safe`, or `unsafe` and a line of comma-separated codes.

Case and surrounding whitespace do not matter (`\\n\\nsafe`, `Unsafe\\n S1 , S10 `). Anything
else fails closed: an answer that is not a verdict (empty, cut off, prose) is unsafe with
`parsed=False`, and a code that is not in the prompt's list is kept as an unknown category, so a
misbehaving guard blocks rather than lets text through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .categories import Category

_CODE = re.compile(r"^[Ss]\d+$")


@dataclass(frozen=True)
class Verdict:
    safe: bool
    #: the violated categories (empty when safe, or unsafe without a code line)
    categories: tuple[Category, ...] = ()
    #: the guard's answer as generated
    raw: str = ""
    #: False when the answer was not a verdict (then safe is False: fail closed)
    parsed: bool = True

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.categories)

    def summary(self) -> str:
        """One line for people: `safe`, `unsafe: S2 (Non-Violent Crimes)`, ..."""
        if self.safe:
            return "safe"
        if not self.parsed:
            return "unsafe: the guard's answer is not a verdict (failing closed)"
        if not self.categories:
            return "unsafe"
        return "unsafe: " + ", ".join(f"{c.code} ({c.label})" for c in self.categories)

    def as_dict(self) -> dict:
        return {
            "safe": self.safe,
            "categories": [
                {"code": c.code, "name": c.label, "default_code": c.default_code}
                for c in self.categories
            ],
            "parsed": self.parsed,
            "raw": self.raw,
        }


def parse_verdict(text: str, categories: Sequence[Category]) -> Verdict:
    by_code = {c.code.upper(): c for c in categories}
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return Verdict(False, raw=text, parsed=False)
    first, *rest = lines
    word, _, tail = first.partition(" ")
    word = word.lower().rstrip(".")
    if word == "safe" and not tail:
        return Verdict(True, raw=text)
    if word != "unsafe":
        return Verdict(False, raw=text, parsed=False)
    # the codes are on the second line; tolerate them on the first (`unsafe S1`)
    code_text = tail or (rest[0] if rest else "")
    codes = [c.strip() for c in code_text.split(",") if c.strip()]
    if any(not _CODE.match(c) for c in codes):
        return Verdict(False, raw=text, parsed=False)
    found: list[Category] = []
    for c in dict.fromkeys(x.upper() for x in codes):
        found.append(by_code.get(c) or Category(c, "unknown category"))
    return Verdict(False, tuple(found), raw=text)
