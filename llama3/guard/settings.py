"""`GuardSettings`: how a chat or server uses a Llama Guard model (which model, what it checks,
what a refusal looks like). The CLI fills it from the `--guard*` flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidRequestError, Llama3Error
from .categories import parse_spec, select

STAGES = ("input", "output")
DEFAULT_MESSAGE = "Sorry, I can't help with that."


@dataclass(frozen=True)
class GuardSettings:
    #: the Llama Guard checkpoint (any format this project loads)
    model: str
    #: 2 or 3; None reads it from the model
    version: int | None = None
    #: `--guard-categories` text: `-S6` excludes, `+Name` adds (see categories.parse_spec)
    categories: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None
    max_seq_len: int | None = None
    #: "refuse": answer with `message` (finish_reason content_filter); "error": a 400
    action: Literal["refuse", "error"] = "refuse"
    message: str = DEFAULT_MESSAGE
    #: which turns are classified: the user's input before generation, the answer after it
    stages: tuple[str, ...] = STAGES
    #: streaming with the output check: text is held back and checked every this many tokens
    chunk_tokens: int = 16

    def __post_init__(self) -> None:
        if self.version not in (None, 2, 3):
            raise InvalidRequestError(
                f"Llama Guard version {self.version} is not supported", "use 2 or 3"
            )
        if self.action not in ("refuse", "error"):
            raise InvalidRequestError(
                f"unknown guard action {self.action!r}", "use 'refuse' or 'error'"
            )
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise InvalidRequestError(
                f"unknown guard stage(s) {', '.join(bad) or '(none given)'}",
                "use input, output or input,output",
            )
        if self.chunk_tokens < 1:
            raise InvalidRequestError("--guard-chunk-tokens must be at least 1", "use 1 or more")
        # a bad selection fails before any model loads (3's list is the longer one)
        select(self.version or 3, *parse_spec(self.categories))

    @property
    def checks_input(self) -> bool:
        return "input" in self.stages

    @property
    def checks_output(self) -> bool:
        return "output" in self.stages

    def load(self):  # -> Guard
        from ..registry import resolve_model
        from .guard import Guard

        exclude, add = parse_spec(self.categories)
        try:
            path = resolve_model(self.model)
        except Llama3Error as e:
            raise Llama3Error(f"the guard model: {e.message}", e.hint) from None
        return Guard.load(
            path,
            version=self.version,
            exclude=exclude,
            add=add,
            device=self.device,
            dtype=self.dtype,
            quantize=self.quantize,
            max_seq_len=self.max_seq_len,
        )
