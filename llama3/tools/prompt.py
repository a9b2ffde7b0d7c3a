"""A dialog with tools -> prompt ids.

Three layouts, picked by the formatter:
- a Jinja template that knows tools (Llama 3.1+ templates): rendered with `tools=` (custom ones,
  OpenAI shape), `builtin_tools=` and `date_string=`; assistant turns keep `tool_calls` with
  arguments as objects, tool results stay role "tool" (the template writes `ipython` turns);
- Meta's `ChatFormat` (no template): the Llama 3.1 layout the Hugging Face template renders —
  `Environment: ipython`, `Tools: ...` for built-ins (as Meta's prompt-format page writes it:
  one newline after it, and no line for code_interpreter alone), the date lines, custom tools as JSON in the
  first user message; built-in calls as `<|python_tag|>name.call(k="v")`, custom calls as
  `{"name": ..., "parameters": ...}`, ended by `<|eom_id|>` when built-ins are on;
- a template without tool support (ChatML, e.g. SmolLM2): the tool definitions and the JSON call
  format go into the system message, calls into assistant text, results into user turns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ..errors import InvalidRequestError
from ..tokenizer.chat_format import EOM, PYTHON_TAG, ChatFormat, ChatFormatter
from ..tokenizer.chat_template import JinjaChatFormat
from .spec import Tool

_JSON_FORMAT = (
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.Do not use variables.\n\n"
)
_USER_INTRO = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
)
_SYSTEM_INTRO = (
    "You have access to the following functions. To call a function, respond with only a JSON "
    'object {"name": function name, "parameters": dictionary of argument name and its value}. '
    "Answer in plain text when no function is needed.\n\n"
)


def today() -> str:
    """Llama 3.1's `Today Date:` format, e.g. "26 Jul 2024"."""
    return date.today().strftime("%d %b %Y")


def encode_with_tools(
    formatter: ChatFormatter,
    dialog: Sequence[Mapping[str, Any]],
    tools: Sequence[Tool],
    *,
    date_string: str | None = None,
) -> list[int]:
    """Prompt ids for `dialog` (OpenAI-style messages) with `tools` offered to the model."""
    messages = [_openai_message(m) for m in dialog]
    custom = [t.openai() for t in tools if not t.builtin]
    builtin = [t.name for t in tools if t.builtin]
    day = date_string or today()
    if isinstance(formatter, JinjaChatFormat):
        if supports_tools(formatter):
            kwargs: dict[str, Any] = {"tools": custom or None, "date_string": day}
            if builtin:
                kwargs["builtin_tools"] = builtin
            return formatter.encode_dialog_prompt(messages, **kwargs)
        return formatter.encode_dialog_prompt(_in_system(messages, tools))
    if isinstance(formatter, ChatFormat):
        return meta_tool_prompt(formatter, messages, custom, builtin, day)
    return formatter.encode_dialog_prompt(_in_system(messages, tools))  # type: ignore[arg-type]


def supports_tools(formatter: JinjaChatFormat) -> bool:
    return "tools" in formatter.template


def _openai_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with `tool_calls[].function.arguments` as objects (what templates read)."""
    out = dict(m)
    calls = m.get("tool_calls")
    if calls:
        fixed = []
        for c in calls:
            fn = dict(c.get("function", c))
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    raise InvalidRequestError(
                        f"tool call arguments are not valid JSON: {args[:60]!r}",
                        "send function.arguments as a JSON object string",
                        param="messages",
                    ) from None
            fn["arguments"] = args
            fixed.append({**c, "type": "function", "function": fn})
        out["tool_calls"] = fixed
    return out


# ---- Meta's layout ---------------------------------------------------------------------------------
def meta_tool_prompt(
    fmt: ChatFormat,
    messages: list[dict[str, Any]],
    custom: list[dict[str, Any]],
    builtin: list[str],
    day: str,
    add_generation_prompt: bool = True,
) -> list[int]:
    enc = fmt._text
    system = ""
    if messages and messages[0]["role"] == "system":
        system = _text(messages[0]).strip()
        messages = messages[1:]
    head = ""
    if builtin or custom:
        head += "Environment: ipython\n"
    named = [b for b in builtin if b != "code_interpreter"]
    if named:  # Meta's published layout: one newline (the HF template writes two)
        head += "Tools: " + ", ".join(named) + "\n"
    head += f"Cutting Knowledge Date: December 2023\nToday Date: {day}\n\n"
    ids = [fmt.bos_id, *_header(fmt, "system"), *enc(head + system), fmt.eot_id]
    if custom:
        if not messages:
            raise InvalidRequestError(
                "custom tools go into the first user message, and there is none",
                "add a user message",
                param="messages",
            )
        first, messages = messages[0], messages[1:]
        defs = "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in custom)
        text = _USER_INTRO + _JSON_FORMAT + defs + _text(first).strip()
        ids += [*_header(fmt, "user"), *enc(text), fmt.eot_id]
    end = fmt._require(fmt.eom_id, EOM) if builtin else fmt.eot_id
    for m in messages:
        role = m["role"]
        if m.get("tool_calls"):
            ids += _header(fmt, "assistant")
            for k, c in enumerate(m["tool_calls"]):
                fn = c["function"]
                if k:
                    ids += enc("\n")
                if fn["name"] in builtin:
                    ids.append(fmt._require(fmt.python_tag_id, PYTHON_TAG))
                    args = ", ".join(f'{k}="{v}"' for k, v in fn["arguments"].items())
                    ids += enc(f"{fn['name']}.call({args})")
                else:
                    ids += enc(
                        f'{{"name": "{fn["name"]}", "parameters": '
                        + json.dumps(fn["arguments"], ensure_ascii=False)
                        + "}"
                    )
            ids.append(end)
        elif role in ("tool", "ipython"):
            content = m.get("content")
            # the Llama 3.1 template writes any iterable content (strings too) as JSON
            body = json.dumps(content, ensure_ascii=False) if content is not None else ""
            ids += [*_header(fmt, "ipython"), *enc(body), fmt.eot_id]
        else:
            ids += [*_header(fmt, role), *enc(_text(m).strip()), fmt.eot_id]
    if add_generation_prompt:
        ids += _header(fmt, "assistant")
    return ids


def _header(fmt: ChatFormat, role: str) -> list[int]:
    return fmt.encode_header({"role": role, "content": ""})  # type: ignore[typeddict-item]


def _text(m: Mapping[str, Any]) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return json.dumps(c, ensure_ascii=False)


# ---- templates without tools -----------------------------------------------------------------------
def _in_system(messages: list[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Tools in the system message, calls as JSON text, results as user turns (plain roles)."""
    defs = "".join(json.dumps(t.openai(), ensure_ascii=False) + "\n" for t in tools)
    intro = _SYSTEM_INTRO + defs
    out: list[dict[str, Any]] = []
    if messages and messages[0]["role"] == "system":
        out.append({"role": "system", "content": intro + "\n" + _text(messages[0])})
        messages = messages[1:]
    else:
        out.append({"role": "system", "content": intro.rstrip("\n")})
    for m in messages:
        if m.get("tool_calls"):
            text = "\n".join(
                json.dumps(
                    {"name": c["function"]["name"], "parameters": c["function"]["arguments"]},
                    ensure_ascii=False,
                )
                for c in m["tool_calls"]
            )
            out.append({"role": "assistant", "content": text})
        elif m["role"] in ("tool", "ipython"):
            out.append({"role": "user", "content": "Function result: " + _text(m)})
        else:
            out.append({"role": m["role"], "content": _text(m)})
    return out
