"""AIME job inputs -> prompt token ids and sampling parameters.

A job carries either `chat_context` (messages; `prompt_input`, when given, is the next user turn)
rendered in the model's own chat format (Meta's layout for Llama 3, the GGUF / Hugging Face chat
template otherwise), or plain text (`text_context` followed by `prompt_input`) encoded as a
completion prompt. The text is used as sent: none of AIME's stripping of "User:" characters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError, Llama3Error
from ..generation.params import SamplingParams
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.chat_format import ChatFormatter
from .protocol import Job

#: the roles the endpoint's chat_context type allows
CHAT_ROLES = ("system", "user", "assistant")
CHAT_FORMAT_HINT = (
    'send chat_context as [{"role": "system" | "user" | "assistant", "content": "text"}, ...]'
)


@dataclass(frozen=True)
class Defaults:
    """Sampling values for fields a job leaves out (the llama3_chat endpoint fills them all)."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    max_gen_tokens: int = 2000
    seed: int | None = None


def _text_of(content: Any, i: int) -> str:
    """A message's text: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = next(iter(part), "?") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequestError(
                    f"chat_context message {i} has a {kind!r} part; this model reads text only",
                    "send text parts only",
                    param="chat_context",
                )
        return "".join(parts)
    raise InvalidRequestError(
        f"chat_context message {i} has content of type {type(content).__name__}",
        CHAT_FORMAT_HINT,
        param="chat_context",
    )


def dialog_of(job: Job) -> list[dict[str, str]]:
    """The job's chat messages, checked, with prompt_input appended as a user turn."""
    ctx = job.chat_context
    if isinstance(ctx, str):  # endpoints with chat_context of type "json" may pass the string on
        try:
            ctx = json.loads(ctx)
        except ValueError:
            raise InvalidRequestError(
                "chat_context is not valid JSON", CHAT_FORMAT_HINT, param="chat_context"
            ) from None
    if not isinstance(ctx, list):
        raise InvalidRequestError(
            f"chat_context must be a list of messages, got {type(ctx).__name__}",
            CHAT_FORMAT_HINT,
            param="chat_context",
        )
    dialog = []
    for i, m in enumerate(ctx):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRequestError(
                f"chat_context message {i} is not a {{'role', 'content'}} object: {m!r:.80}",
                CHAT_FORMAT_HINT,
                param="chat_context",
            )
        if m["role"] not in CHAT_ROLES:
            raise InvalidRequestError(
                f"chat_context message {i} has the unknown role {m['role']!r}",
                CHAT_FORMAT_HINT,
                param="chat_context",
            )
        dialog.append({"role": m["role"], "content": _text_of(m["content"], i)})
    if job.prompt_input:
        dialog.append({"role": "user", "content": job.prompt_input})
    if not dialog:
        raise InvalidRequestError(
            "the job has an empty chat_context and no prompt_input",
            "send at least one message",
            param="chat_context",
        )
    return dialog


def plain_text_of(job: Job) -> str:
    text = (job.text_context or "") + job.prompt_input
    if not text:
        raise InvalidRequestError(
            "the job has no prompt: chat_context, text_context and prompt_input are all empty",
            "send chat_context (messages) or text_context / prompt_input (plain text)",
            param="prompt_input",
        )
    return text


def prompt_ids(
    job: Job, tokenizer: BaseTokenizer, formatter: Callable[[], ChatFormatter]
) -> list[int]:
    """Token ids for the job. `formatter` is called only for chat jobs, so a base model without a
    chat template still serves plain-text jobs."""
    if job.chat_context is not None:
        dialog = dialog_of(job)
        try:
            fmt = formatter()
        except Llama3Error as e:
            raise InvalidRequestError(
                f"this model cannot take chat_context: {e.message}",
                "send text_context / prompt_input (plain text) instead",
                param="chat_context",
            ) from None
        return fmt.encode_dialog_prompt(dialog)  # type: ignore[arg-type]
    return tokenizer.encode_prompt(plain_text_of(job))


def sampling_params(job: Job, defaults: Defaults) -> SamplingParams:
    """The job's sampling values in this engine's terms. AIME uses top_p = 0 and top_k = 0 for
    "off"; this engine uses top_p = 1 and top_k = 0."""
    top_p = job.top_p if job.top_p is not None else defaults.top_p
    top_k = job.top_k if job.top_k is not None else defaults.top_k
    max_tokens = job.max_gen_tokens if job.max_gen_tokens is not None else defaults.max_gen_tokens
    if max_tokens < 1:
        raise InvalidRequestError(
            f"max_gen_tokens must be at least 1, got {max_tokens}",
            "ask for 1 or more tokens",
            param="max_gen_tokens",
        )
    return SamplingParams(
        temperature=job.temperature if job.temperature is not None else defaults.temperature,
        top_p=1.0 if top_p <= 0 else top_p,
        top_k=max(top_k, 0),
        max_tokens=max_tokens,
        seed=defaults.seed,
    )
