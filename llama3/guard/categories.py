"""Llama Guard's hazard categories: the lists each version was trained on, and custom selections.

The names are written as the model saw them in its prompt: Llama Guard 2's with a trailing space
after the period (its Hugging Face chat template), Llama Guard 3's without. A selection drops
categories and appends custom ones, then numbers the result S1..Sn again, as Meta's
`build_custom_prompt` (llama-recipes) does, so the model always sees a gap-free list; each
`Category` remembers the code it has in its version's default list (`default_code`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidRequestError

GUARD2_NAMES = (
    "Violent Crimes. ",
    "Non-Violent Crimes. ",
    "Sex Crimes. ",
    "Child Exploitation. ",
    "Specialized Advice. ",
    "Privacy. ",
    "Intellectual Property. ",
    "Indiscriminate Weapons. ",
    "Hate. ",
    "Self-Harm. ",
    "Sexual Content. ",
)

GUARD3_NAMES = (
    "Violent Crimes.",
    "Non-Violent Crimes.",
    "Sex Crimes.",
    "Child Exploitation.",
    "Defamation.",
    "Specialized Advice.",
    "Privacy.",
    "Intellectual Property.",
    "Indiscriminate Weapons.",
    "Hate.",
    "Self-Harm.",
    "Sexual Content.",
    "Elections.",
    "Code Interpreter Abuse.",
)

DEFAULT_NAMES = {2: GUARD2_NAMES, 3: GUARD3_NAMES}


@dataclass(frozen=True)
class Category:
    #: the code the model sees and answers with ("S2")
    code: str
    #: as written in the prompt ("Non-Violent Crimes.")
    name: str
    #: optional policy text printed under the name (llama-recipes' `with_policy`)
    description: str | None = None
    #: the code in the version's default list; None for a custom category
    default_code: str | None = None

    @property
    def label(self) -> str:
        """The name without its punctuation, for logs, metrics and messages."""
        return self.name.strip().rstrip(".").strip()

    def line(self) -> str:
        head = f"{self.code}: {self.name}"
        return f"{head}\n{self.description}" if self.description else head


def select(
    version: int,
    exclude: Iterable[str] = (),
    add: Sequence[str | tuple[str, str]] = (),
) -> tuple[Category, ...]:
    """The version's categories without `exclude` (default codes, "S6"), plus `add` (names, or
    (name, description) pairs), numbered S1..Sn."""
    if version not in DEFAULT_NAMES:
        raise InvalidRequestError(
            f"Llama Guard {version} is not supported", "use Llama Guard 2 or 3 (version 2 or 3)"
        )
    defaults = DEFAULT_NAMES[version]
    codes = {f"S{i + 1}" for i in range(len(defaults))}
    drop = {c.strip().upper() for c in exclude if c.strip()}
    unknown = sorted(drop - codes, key=lambda c: (len(c), c))
    if unknown:
        raise InvalidRequestError(
            f"Llama Guard {version} has no category {', '.join(unknown)}",
            f"exclude one of S1..S{len(defaults)}",
        )
    kept: list[tuple[str, str | None, str | None]] = [
        (name, None, f"S{i + 1}") for i, name in enumerate(defaults) if f"S{i + 1}" not in drop
    ]
    for item in add:
        name, desc = (item, None) if isinstance(item, str) else item
        if not name.strip():
            raise InvalidRequestError("a custom category needs a name", "e.g. 'Profanity.'")
        kept.append((name, desc or None, None))
    if not kept:
        raise InvalidRequestError(
            "every category is excluded, so nothing could ever be unsafe",
            "keep at least one category or add a custom one",
        )
    return tuple(
        Category(f"S{i + 1}", name, desc, default) for i, (name, desc, default) in enumerate(kept)
    )


def parse_spec(spec: str | None) -> tuple[list[str], list[str | tuple[str, str]]]:
    """`--guard-categories` text -> (codes to exclude, categories to add).

    Comma-separated items: `-S6` excludes S6 of the default list, `+NAME` or `+NAME=DESCRIPTION`
    adds a custom category. Write it as `--guard-categories=-S6,+Profanity.` (with `=`, so the
    leading `-` is not read as a flag).
    """
    exclude: list[str] = []
    add: list[str | tuple[str, str]] = []
    for raw in (spec or "").split(","):
        item = raw.strip()
        if not item:
            continue
        if item[0] == "-":
            exclude.append(item[1:])
        elif item[0] == "+":
            name, eq, desc = item[1:].partition("=")
            add.append((name, desc) if eq else name)
        else:
            raise InvalidRequestError(
                f"cannot read the category item {item!r}",
                "write -S6 to exclude a default category or +Name to add one, "
                "e.g. --guard-categories=-S6,+Profanity.",
            )
    return exclude, add
