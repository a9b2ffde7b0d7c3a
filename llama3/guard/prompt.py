"""The exact Llama Guard 2 and 3 prompts, as text and as token ids.

Both versions share one body (Meta's llama-recipes `prompt_format_utils` and llama-stack's
`llama_guard.py`, equal to the body of the models' Hugging Face chat templates):

    Task: Check if there is unsafe content in '{role}' messages in conversations according our
    safety policy with the below categories.  <BEGIN UNSAFE CONTENT CATEGORIES> S1: ... <END ...>
    <BEGIN CONVERSATION>  User: ...  Agent: ...  <END CONVERSATION>
    Provide your safety assessment for ONLY THE LAST {role} message in the above conversation: ...

Llama Guard 2 (Llama 3 based) wraps it as `<|begin_of_text|>[INST] {body} [/INST]`, its HF
chat template. Llama Guard 3 (Llama 3.1 based) sends it as one user turn in the Llama 3 header
layout and opens the assistant header, `...<|eot_id|><|start_header_id|>assistant<|end_header_id|>
\\n\\n`, as Meta's reference (llama-stack through the Llama 3 chat format) does; the HF template
differs by a leading space before `<|begin_of_text|>` and no final `\\n\\n` (the model then
answers `\\n\\nsafe`; the verdict parser accepts both).

Roles: 'User' classifies the last user turn (the conversation is cut after it: the answer must
not be present); 'Agent' classifies the last assistant answer, with the turns before it as context.
System and tool messages are not shown to the guard (they are the operator's, not the user's or
the model's words).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ..errors import InvalidRequestError
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.chat_format import ChatFormat
from .categories import Category

GuardRole = Literal["User", "Agent"]
_SPEAKERS = {"user": "User", "assistant": "Agent"}

_BODY = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our "
    "safety policy with the below categories.\n"
    "\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "{categories}\n"
    "<END UNSAFE CONTENT CATEGORIES>\n"
    "\n"
    "<BEGIN CONVERSATION>\n"
    "\n"
    "{conversation}\n"
    "\n"
    "<END CONVERSATION>\n"
    "\n"
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
_GUARD3_HEAD = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
_GUARD3_TAIL = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def turns(conversation: Sequence[Any], role: GuardRole | None = None) -> tuple[GuardRole, list]:
    """(role, [(speaker, text)]) the guard sees: user/assistant turns, cut for the role."""
    shown: list[tuple[GuardRole, str]] = []
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(
                f"message {i} is not a {{role, content}} dict",
                'write each message as {"role": "user", "content": "..."}',
                param="messages",
            )
        speaker = _SPEAKERS.get(m["role"])
        if speaker is None:
            continue
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequestError(
                f"message {i} has non-text content", "join text parts into one string"
            )
        shown.append((speaker, content.strip()))
    if role is None:
        if not shown:
            raise InvalidRequestError(
                "the conversation has no user or assistant message to classify",
                "give at least one user message",
                param="messages",
            )
        role = shown[-1][0]
    if role not in ("User", "Agent"):
        raise InvalidRequestError(
            f"unknown guard role {role!r}", "use 'User' (the input) or 'Agent' (the answer)"
        )
    if role == "User":
        last = max((i for i, (s, _) in enumerate(shown) if s == "User"), default=None)
        if last is None:
            raise InvalidRequestError(
                "the conversation has no user message to classify", "add a user message"
            )
        shown = shown[: last + 1]
    elif not shown or shown[-1][0] != "Agent":
        raise InvalidRequestError(
            "role 'Agent' classifies the assistant's answer, but the conversation does not end "
            "with one",
            "append the assistant message, or use role 'User'",
        )
    return role, shown


def body(conversation: Sequence[Any], categories: Sequence[Category], role=None) -> str:
    role, shown = turns(conversation, role)
    return _BODY.format(
        role=role,
        categories="\n".join(c.line() for c in categories),
        conversation="\n\n".join(f"{s}: {t}" for s, t in shown),
    )


def render(
    version: int, conversation: Sequence[Any], categories: Sequence[Category], role=None
) -> str:
    """The whole prompt as text, special tokens written out (`<|begin_of_text|>` included)."""
    text = body(conversation, categories, role)
    if version == 2:
        return f"<|begin_of_text|>[INST] {text} [/INST]"
    return _GUARD3_HEAD + text + _GUARD3_TAIL


def encode(
    tokenizer: BaseTokenizer,
    version: int,
    conversation: Sequence[Any],
    categories: Sequence[Category],
    role=None,
) -> list[int]:
    """The prompt as ids. Message text is encoded as plain text, so special-token text inside a
    message can never become a control token."""
    text = body(conversation, categories, role)
    if version == 2:
        return tokenizer.encode(
            f"[INST] {text} [/INST]", bos=tokenizer.bos_id is not None, eos=False
        )
    return ChatFormat(tokenizer).encode_dialog_prompt([{"role": "user", "content": text}])
