"""OpenAI response shapes as plain dicts: completions, chat completions, their stream chunks,
usage and the two logprobs layouts. Pure functions over what generation produced; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer.base import BaseTokenizer


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; JSON keeps non-ASCII text as UTF-8 (never split mid-character)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


class TokenText:
    """Token id -> (text, bytes) for logprobs, memoised per request."""

    def __init__(self, tokenizer: BaseTokenizer) -> None:
        self.tokenizer = tokenizer
        self._decode_bytes = getattr(tokenizer, "decode_bytes", None)
        self._memo: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token: int) -> tuple[str, bytes]:
        hit = self._memo.get(token)
        if hit is None:
            if self._decode_bytes is not None:
                raw = self._decode_bytes([token])
                text = raw.decode("utf-8", errors="replace")
            else:
                text = self.tokenizer.decode([token])
                raw = text.encode()
            hit = self._memo[token] = (text, raw)
        return hit


def chat_logprob(
    tt: TokenText, token: int, logprob: float, top: list[tuple[int, float]] | None
) -> dict[str, Any]:
    """One entry of `choices[].logprobs.content` (chat)."""

    def entry(t: int, lp: float) -> dict[str, Any]:
        text, raw = tt(t)
        return {"token": text, "logprob": lp, "bytes": list(raw)}

    out = entry(token, logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in top or ()]
    return out


@dataclass
class CompletionLogprobs:
    """`choices[].logprobs` of /v1/completions: parallel lists, offsets into the choice's text."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(
        self,
        tt: TokenText,
        token: int,
        logprob: float | None,
        top: list[tuple[int, float]] | None,
        offset: int,
        want_top: bool,
    ) -> None:
        self.tokens.append(tt(token)[0])
        self.token_logprobs.append(logprob)
        self.top_logprobs.append({tt(t)[0]: lp for t, lp in top or ()} if want_top else None)
        self.text_offset.append(offset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }

    def tail(self, start: int) -> dict[str, Any]:
        """The entries from `start` on (one stream chunk's worth)."""
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }


@dataclass
class Envelope:
    """The fields every response and chunk of one request share."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    def wrap(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "choices": choices,
            **extra,
        }
