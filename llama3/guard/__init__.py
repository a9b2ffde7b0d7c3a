"""Llama Guard 2 and 3: the exact prompts, verdict parsing, and a `Guard` over a loaded model.

`Guard.load(path).classify(conversation)` -> `Verdict`; `GuardSettings` configures the filter
`llama3 chat --guard` and `llama3 serve --guard` put around generation (see `serving`).
"""

from .categories import Category, parse_spec, select
from .guard import Guard, detect_version
from .prompt import encode, render
from .settings import GuardSettings
from .verdict import Verdict, parse_verdict

__all__ = [
    "Category",
    "Guard",
    "GuardSettings",
    "Verdict",
    "detect_version",
    "encode",
    "parse_spec",
    "parse_verdict",
    "render",
    "select",
]
