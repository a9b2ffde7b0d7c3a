"""Meta's Llama 3 chat layout as token ids: message types, `ChatFormat`, and its inverse for replies.

Layout (meta-llama/llama3 `ChatFormat`, plus the Llama 3.1 additions of llama-models):
`<|begin_of_text|>` then per message `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`,
then an open assistant header. Content is encoded as plain text, so special-token text typed by a
user can never become a control token. Works with any tokenizer whose `special_tokens` hold the
Llama 3 names (tiktoken, HF or GGUF vocabularies). Jinja templates are not handled here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from ..errors import InvalidRequestError, TokenizerError
from .base import BaseTokenizer

Role = Literal["system", "user", "assistant", "ipython", "tool"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]

ROLES: tuple[str, ...] = ("system", "user", "assistant", "ipython", "tool")
# llama-models renders Role.tool under the name the model was trained on.
_ROLE_TEXT = {"tool": "ipython"}

BEGIN_OF_TEXT = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"


class _MessageRequired(TypedDict):
    role: Role
    content: str


class Message(_MessageRequired, total=False):
    """A chat message. The optional keys are Llama 3.1 assistant features."""

    #: the reply is a tool call: rendered after `<|python_tag|>`
    tool_call: bool
    #: "end_of_message" ends the message with `<|eom_id|>` (the model awaits a tool result)
    stop_reason: StopReason


Dialog = Sequence[Message]


@runtime_checkable
class ChatFormatter(Protocol):
    """Anything that turns a dialog into prompt ids (Meta's layout, a Jinja template, ...)."""

    def encode_dialog_prompt(
        self, dialog: Dialog, add_generation_prompt: bool = True
    ) -> list[int]: ...


class ChatFormat:
    """Meta's exact Llama 3 / 3.1 chat token layout over any tokenizer with the Llama 3 specials."""

    def __init__(self, tokenizer: BaseTokenizer) -> None:
        self.tokenizer = tokenizer
        specials = getattr(tokenizer, "special_tokens", None) or {}
        missing = [t for t in (BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT) if t not in specials]
        if missing:
            raise TokenizerError(
                f"the tokenizer has no {', '.join(missing)} special token(s), so it is not a "
                "Llama 3 vocabulary and Meta's chat format cannot be used",
                hint="use the chat template shipped with the model instead",
            )
        self.bos_id: int = specials[BEGIN_OF_TEXT]
        self.start_header_id: int = specials[START_HEADER]
        self.end_header_id: int = specials[END_HEADER]
        self.eot_id: int = specials[EOT]
        # Llama 3.1 names; a 3.0 name table has reserved tokens at these ids.
        self.eom_id: int | None = specials.get(EOM)
        self.python_tag_id: int | None = specials.get(PYTHON_TAG)
        self._newlines = self._text("\n\n")

    def _text(self, s: str) -> list[int]:
        # Default encode settings: special-token text stays plain text.
        return self.tokenizer.encode(s, bos=False, eos=False)

    def _require(self, token_id: int | None, name: str) -> int:
        if token_id is None:
            raise TokenizerError(
                f"the tokenizer has no {name} token (Llama 3.0 name table?)",
                hint='use the Llama 3.1 names, e.g. Tokenizer(special_tokens_version="3.1")',
            )
        return token_id

    # ---- encoding --------------------------------------------------------------------------------
    def encode_header(self, message: Message) -> list[int]:
        """`<|start_header_id|>{role}<|end_header_id|>\\n\\n` as ids."""
        role = _check_role(message)
        return [
            self.start_header_id,
            *self._text(_ROLE_TEXT.get(role, role)),
            self.end_header_id,
            *self._newlines,
        ]

    def encode_message(self, message: Message) -> list[int]:
        """Header, stripped content, then `<|eot_id|>` (or `<|eom_id|>` for 3.1 tool turns)."""
        tokens = self.encode_header(message)
        content = _content(message).strip()
        is_assistant = message["role"] == "assistant"
        tool_call = is_assistant and bool(message.get("tool_call", False))
        if is_assistant and content.startswith(PYTHON_TAG):
            # A reply decoded with its specials kept: turn the literal tag back into the token.
            tool_call, content = True, content[len(PYTHON_TAG) :]
        if tool_call:
            tokens.append(self._require(self.python_tag_id, PYTHON_TAG))
        tokens.extend(self._text(content))
        if is_assistant and message.get("stop_reason") == "end_of_message":
            tokens.append(self._require(self.eom_id, EOM))
        else:
            tokens.append(self.eot_id)
        return tokens

    def encode_dialog_prompt(self, dialog: Dialog, add_generation_prompt: bool = True) -> list[int]:
        """`<|begin_of_text|>`, every message, then an open assistant header for the reply."""
        if isinstance(dialog, (str, bytes)) or not isinstance(dialog, Sequence):
            raise InvalidRequestError(
                f"a dialog must be a list of messages, got {type(dialog).__name__}",
                hint='pass [{"role": "user", "content": "..."}, ...]',
                param="messages",
            )
        tokens = [self.bos_id]
        for message in dialog:
            tokens.extend(self.encode_message(message))
        if add_generation_prompt:
            tokens.extend(self.encode_header({"role": "assistant", "content": ""}))
        return tokens

    # ---- decoding --------------------------------------------------------------------------------
    def decode_assistant_message(
        self, ids: Sequence[int], stop_reason: StopReason = "out_of_tokens"
    ) -> dict[str, Any]:
        """Turn generated ids back into an assistant message (llama-models' rules, on ids).

        A leading assistant header is dropped; a leading `<|python_tag|>` marks a tool call; a
        trailing `<|eot_id|>` / `<|eom_id|>` sets `stop_reason` to end_of_turn / end_of_message,
        otherwise the given `stop_reason` is kept. Content is stripped of spaces, as Meta does.
        """
        ids = list(ids)
        header = self.encode_header({"role": "assistant", "content": ""})
        if ids[: len(header)] == header:
            ids = ids[len(header) :]
        tool_call = bool(ids) and self.python_tag_id is not None and ids[0] == self.python_tag_id
        if tool_call:
            ids = ids[1:]
        if ids and ids[-1] == self.eot_id:
            ids, stop_reason = ids[:-1], "end_of_turn"
        elif ids and self.eom_id is not None and ids[-1] == self.eom_id:
            ids, stop_reason = ids[:-1], "end_of_message"
        return {
            "role": "assistant",
            "content": self.tokenizer.decode(ids).strip(" "),
            "stop_reason": stop_reason,
            "tool_call": tool_call,
        }


def _check_role(message: Any) -> str:
    if not isinstance(message, dict) or "role" not in message:
        raise InvalidRequestError(
            f"a chat message must be a dict with 'role' and 'content', got {message!r:.80}",
            hint='write each message as {"role": "user", "content": "..."}',
            param="messages",
        )
    role = message["role"]
    if role not in ROLES:
        raise InvalidRequestError(
            f"unknown chat role {role!r}",
            hint=f"use one of: {', '.join(ROLES)}",
            param="messages",
        )
    return role


def _content(message: Message) -> str:
    content = message.get("content")
    if content is None:  # OpenAI-style assistant tool-call turns carry no text
        return ""
    if not isinstance(content, str):
        raise InvalidRequestError(
            f"message content must be a string, got {type(content).__name__}",
            hint="join text parts into one string before building the prompt",
            param="messages",
        )
    return content
