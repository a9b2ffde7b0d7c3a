"""Sampling parameters, finish reasons and the token events generation yields.

`SamplingParams` is frozen and validated where it is built, so every front end (Meta API, console
chat, HTTP server) gets the same clear errors for the same bad values.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidRequestError
from ..structured.spec import GuidedDecoding

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Defaults are Meta's (temperature 0.6, top-p 0.9)."""

    #: new tokens at most; None = up to the context limit
    max_tokens: int | None = None
    #: 0 = greedy
    temperature: float = 0.6
    top_p: float = 0.9
    #: 0 = off
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    #: per-request generator seed; same seed -> same text. None = fresh randomness.
    seed: int | None = None
    #: stop strings; the returned text ends before the first one
    stop: tuple[str, ...] = ()
    #: extra stop token ids on top of the model's stop set
    stop_token_ids: tuple[int, ...] = ()
    #: keep generating past the model's stop tokens (benchmarks)
    ignore_eos: bool = False
    #: None = no logprobs; 0 = the chosen token's logprob; N = also the N most likely alternatives
    logprobs: int | None = None
    #: also return the prompt tokens' logprobs (Meta's echo)
    echo: bool = False
    #: constrain the output to a JSON schema / regex / grammar (llama3.structured)
    guided: GuidedDecoding | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        self._validate()

    def _validate(self) -> None:
        def bad(param: str, msg: str, hint: str) -> InvalidRequestError:
            return InvalidRequestError(f"{param} {msg}", hint, param=param)

        def finite(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, f"must be a finite number, got {v!r}", f"pass a number for {name}")
            # checked as sampling uses it, in float32: 5e-324 is 0 there (a fuzzer found that
            # a penalty > 0 here failed inside the engine's step)
            return float(struct.unpack("f", struct.pack("f", v))[0]) if abs(v) < 3e38 else v

        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise bad(
                "max_tokens",
                f"must be a positive integer, got {self.max_tokens!r}",
                "use 1 or more",
            )
        if not 0 <= finite("temperature") <= 100:
            raise bad(
                "temperature",
                f"must be between 0 and 100, got {self.temperature}",
                "0 means greedy",
            )
        if not 0 < finite("top_p") <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}", "1 disables top-p")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(
                "top_k", f"must be a non-negative integer, got {self.top_k!r}", "0 disables top-k"
            )
        if not 0 <= finite("min_p") <= 1:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}", "0 disables min-p")
        if not 0 < finite("repetition_penalty") <= 10:
            raise bad(
                "repetition_penalty",
                f"must be in (0, 10], got {self.repetition_penalty}",
                "1 disables it",
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= finite(name) <= 2:
                raise bad(
                    name, f"must be between -2 and 2, got {getattr(self, name)}", "0 disables it"
                )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise bad("seed", f"must be an integer, got {self.seed!r}", "pass an integer seed")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= 20
        ):
            raise bad(
                "logprobs",
                f"must be an integer between 0 and 20, got {self.logprobs!r}",
                "use 0-20",
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise bad(
                    "stop",
                    f"entries must be non-empty strings, got {s!r}",
                    "remove empty stop strings",
                )
        if self.logit_bias:
            for k, v in self.logit_bias.items():
                if (
                    not isinstance(k, int)
                    or not isinstance(v, (int, float))
                    or not -100 <= v <= 100
                ):
                    raise bad(
                        "logit_bias",
                        f"entry {k!r}: {v!r} is invalid",
                        "map token ids to numbers in [-100, 100]",
                    )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(slots=True)
class TokenEvent:
    """One generated token of one sequence, as generation produces it."""

    #: which prompt of the batch
    index: int
    token: int
    #: text that became final with this token ("" when held back or for a stop token)
    text: str
    logprob: float | None = None
    #: [(token id, logprob)] of the most likely alternatives, when asked for
    top_logprobs: list[tuple[int, float]] | None = None
    #: set on the last event of a sequence
    finish_reason: FinishReason | None = None
    #: `Llama.chat`'s answer as a message; with tools, parsed calls under "tool_calls"
    message: dict[str, Any] | None = None


@dataclass
class GenerationResult:
    """Everything generation produced for one prompt."""

    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    #: logprob of each prompt token given its prefix (first is 0.0, as in Meta's code); echo only
    prompt_logprobs: list[float] | None = None
    finish_reason: FinishReason | None = None
