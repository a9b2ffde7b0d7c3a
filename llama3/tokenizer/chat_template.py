"""Jinja chat templates (Hugging Face tokenizer_config.json, GGUF `tokenizer.chat_template`).

Owns: rendering a template with Hugging Face's semantics (sandboxed Jinja, `raise_exception`,
`strftime_now`, HF's `tojson`, `{% generation %}` blocks) and turning the text into prompt ids
without letting special-token text inside a message become a control token, and without a double
BOS. Does not own Meta's hand-built layout (chat_format.py) or the tokenizers themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InvalidRequestError, Llama3Error, TokenizerError
from .base import BaseTokenizer

if TYPE_CHECKING:
    import jinja2

_TEMPLATE_HINT = "check the messages against what the model's chat template accepts"
# Stand-ins for message text while rendering; private-use characters no template touches.
_PLACEHOLDER = "\ue000{}\ue001"


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"the chat template refused the messages: {message}", hint=_TEMPLATE_HINT)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Hugging Face's filter: plain json.dumps (Jinja's own escapes HTML and sorts keys).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers) render their body."""

        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    class Namespace(jinja2.utils.Namespace):
        """`namespace()` that refuses underscore attributes (no reach into CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"namespace attribute {name!r} is not allowed"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationBlocks, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = Namespace
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(
            f"the chat template has a syntax error (line {e.lineno}): {e.message}",
            hint="fix chat_template in tokenizer_config.json / the GGUF, or use another template",
        ) from None


def _plain(value: Any) -> Any:
    """A copy made of plain JSON types only (what a sandboxed template may see)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class JinjaChatFormat:
    """A Jinja chat template as a `ChatFormatter`: messages -> prompt text -> prompt ids."""

    def __init__(self, tokenizer: BaseTokenizer, template: str) -> None:
        if not isinstance(template, str) or not template.strip():
            raise TokenizerError("the chat template is empty", hint="pass a Jinja chat template")
        self.tokenizer = tokenizer
        self.template = template
        self._compiled = _compile(template)
        id_to_text = {i: t for t, i in tokenizer.special_tokens.items()}

        def text_of(token_id: int | None) -> str:
            if token_id is None:
                return ""
            return id_to_text.get(token_id) or tokenizer.decode([token_id])

        self.bos_token = text_of(tokenizer.bos_id)
        self.eos_token = text_of(tokenizer.eos_id)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text, as `transformers`' `apply_chat_template(..., tokenize=False)` gives it.

        Extra keyword arguments (`tools`, `documents`, `date_string`, ...) reach the template.
        """
        context: dict[str, Any] = {"tools": None, "documents": None}
        context.update(_plain(kwargs))
        context.update(
            messages=_check_messages(messages),
            add_generation_prompt=bool(add_generation_prompt),
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        try:
            return self._compiled.render(**context)
        except Llama3Error:
            raise
        except Exception as e:  # noqa: BLE001 - a template is a program: its errors are its own
            raise TokenizerError(
                f"the chat template failed: {type(e).__name__}: {e}", hint=_TEMPLATE_HINT
            ) from None

    def encode_dialog_prompt(
        self, dialog: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """Prompt ids: template text with its special tokens as ids, message text as plain text.

        Special-token text inside a message (a user typing `<|eot_id|>`) is encoded as ordinary
        text. BOS is prepended only when the tokenizer wants one and the template did not emit it.
        """
        messages = _check_messages(dialog)
        text = self.render(messages, add_generation_prompt, **kwargs)
        spans = self._message_spans(messages, text, add_generation_prompt, kwargs)
        enc = self.tokenizer.encode
        ids: list[int] = []
        pos = 0
        for start, end in spans:
            ids += enc(text[pos:start], bos=False, eos=False, allowed_special="all")
            ids += enc(text[start:end], bos=False, eos=False)
            pos = end
        ids += enc(text[pos:], bos=False, eos=False, allowed_special="all")
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def _message_spans(
        self,
        messages: list[dict[str, Any]],
        text: str,
        add_generation_prompt: bool,
        kwargs: Mapping[str, Any],
    ) -> list[tuple[int, int]]:
        """Where each message text holding special-token text sits in `text`, in order.

        Renders again with a placeholder standing in for each such text (its outer whitespace
        kept, so templates that `trim` behave the same) and maps the placeholders back.
        """
        specials = [t for t in self.tokenizer.special_tokens if t]
        if not specials:
            return []
        originals: list[str] = []

        def stand_in(s: Any) -> Any:
            if not isinstance(s, str) or not any(t in s for t in specials):
                return s
            core = s.strip()
            lead = s[: len(s) - len(s.lstrip())]
            trail = s[len(s.rstrip()) :]
            originals.append(core)
            return lead + _PLACEHOLDER.format(len(originals) - 1) + trail

        masked = []
        for m in messages:
            m = dict(m)
            content = m.get("content")
            if isinstance(content, list):
                m["content"] = [
                    {**part, "text": stand_in(part["text"])}
                    if isinstance(part, dict) and "text" in part
                    else part
                    for part in content
                ]
            else:
                m["content"] = stand_in(content)
            masked.append(m)
        if not originals:
            return []
        masked_text = self.render(masked, add_generation_prompt, **kwargs)
        spans: list[tuple[int, int]] = []
        rebuilt: list[str] = []
        pos = 0
        for i, core in enumerate(originals):
            mark = _PLACEHOLDER.format(i)
            at = masked_text.find(mark, pos)
            if at < 0 or masked_text.count(mark) != 1:
                break
            rebuilt.append(masked_text[pos:at])
            start = sum(len(r) for r in rebuilt)
            rebuilt.append(core)
            spans.append((start, start + len(core)))
            pos = at + len(mark)
        rebuilt.append(masked_text[pos:])
        if len(spans) != len(originals) or "".join(rebuilt) != text:
            raise TokenizerError(
                "a message contains special-token text and the chat template rewrites message text, "
                "so it cannot be kept as plain text",
                hint="remove special-token text such as <|eot_id|> from the messages",
            )
        return spans


def _check_messages(dialog: Any) -> list[dict[str, Any]]:
    if isinstance(dialog, (str, bytes)) or not isinstance(dialog, Sequence):
        raise InvalidRequestError(
            f"a dialog must be a list of messages, got {type(dialog).__name__}",
            hint='pass [{"role": "user", "content": "..."}, ...]',
        )
    out = []
    for i, m in enumerate(dialog):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidRequestError(
                f"message {i} is not a mapping with a 'role'",
                hint='each message is {"role": "user", "content": "..."}',
            )
        out.append(_plain(m))
    return out
