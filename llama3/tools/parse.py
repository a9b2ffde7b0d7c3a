"""A finished answer -> content + tool calls.

Forms recognised (Llama 3.1 / 3.2 output): `<|python_tag|>` followed by a built-in call
`brave_search.call(query="...")` (or JSON, or code for `code_interpreter`), optionally ended by
`<|eom_id|>`; JSON `{"name": ..., "parameters" | "arguments": {...}}`, one or several separated
by `;` / newlines, or a JSON list of them; Llama 3.2's pythonic `[f(a=1), g(b="x")]`. Arguments
are literals only (`ast.literal_eval`, never executed). Anything else, a malformed call or one
naming an unknown function, stays content: the caller answers it as text with "stop".

The engine's event text drops special tokens; `restore_specials` puts `<|python_tag|>` /
`<|eom_id|>` back from the token ids so both kinds of text parse the same.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer.chat_format import EOM, EOT, PYTHON_TAG
from .spec import ToolCall


@dataclass
class ParsedAnswer:
    #: the text that is not a call (None when the answer is only calls)
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.calls else None


class _NotACall(ValueError):
    pass


def parse_answer(text: str, tool_names: Collection[str], *, parallel: bool = True) -> ParsedAnswer:
    """Split `text` into content and calls to `tool_names`; `parallel=False` keeps the first."""
    body = text
    for end in (EOM, EOT):
        if body.rstrip().endswith(end):
            body = body.rstrip()[: -len(end)]
    prefix = ""
    tagged = PYTHON_TAG in body
    if tagged:
        prefix, _, body = body.partition(PYTHON_TAG)
        body = body.replace(PYTHON_TAG, "")
    try:
        calls = _calls(body.strip(), set(tool_names), tagged)
    except _NotACall:
        return ParsedAnswer(text.replace(PYTHON_TAG, "").replace(EOM, ""))
    if not parallel:
        calls = calls[:1]
    content = prefix.strip() or None
    return ParsedAnswer(content, calls)


def _calls(s: str, names: set[str], tagged: bool) -> list[ToolCall]:
    if not s or not names:
        raise _NotACall(s)
    if s[0] in "{[" and (calls := _json_calls(s, names)) is not None:
        return calls
    if s[0] == "[":
        return _pythonic(s, names, bracketed=True)
    if ".call(" in s.split("\n", 1)[0]:
        return _pythonic(s, names, bracketed=False)
    if tagged and "code_interpreter" in names:  # the tag then code: Llama 3.1's interpreter call
        return [ToolCall("code_interpreter", {"code": s})]
    raise _NotACall(s)


# ---- JSON ------------------------------------------------------------------------------------------
def _json_calls(s: str, names: set[str]) -> list[ToolCall] | None:
    """None when `s` is not JSON at all (maybe pythonic); raises when it is JSON but no call."""
    dec = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while pos < len(s):
        try:
            v, pos = dec.raw_decode(s, pos)
        except json.JSONDecodeError:
            if not values:
                return None
            raise _NotACall(s) from None
        values.extend(v if isinstance(v, list) else [v])
        while pos < len(s) and s[pos] in " \t\r\n;":
            pos += 1
    return [_json_call(v, names) for v in values] or _fail(s)


def _json_call(v: Any, names: set[str]) -> ToolCall:
    if not isinstance(v, dict):
        raise _NotACall(str(v))
    if v.get("type") == "function" and isinstance(v.get("function"), dict):
        v = v["function"]  # OpenAI's own shape, as some fine-tunes echo it
    name = v.get("name")
    args = v.get("parameters", v.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise _NotACall(args) from None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        raise _NotACall(str(v))
    extra = set(v) - {"name", "parameters", "arguments", "type"}
    if extra:
        raise _NotACall(str(v))
    return ToolCall(name, args)


def _fail(s: str) -> list[ToolCall]:
    raise _NotACall(s)


# ---- pythonic --------------------------------------------------------------------------------------
def _pythonic(s: str, names: set[str], bracketed: bool) -> list[ToolCall]:
    src = s if bracketed else "[" + ", ".join(p for p in _lines(s)) + "]"
    try:
        tree = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError):
        raise _NotACall(s) from None
    if not isinstance(tree, ast.List) or not tree.elts:
        raise _NotACall(s)
    return [_py_call(e, names) for e in tree.elts]


def _lines(s: str) -> list[str]:
    return [p.strip() for p in s.replace(";", "\n").splitlines() if p.strip()]


def _py_call(node: ast.expr, names: set[str]) -> ToolCall:
    if not isinstance(node, ast.Call) or node.args:
        raise _NotACall(ast.dump(node))
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr == "call" and isinstance(f.value, ast.Name):
        name = f.value.id  # brave_search.call(...)
    elif isinstance(f, ast.Name):
        name = f.id
    else:
        raise _NotACall(ast.dump(node))
    if name not in names:
        raise _NotACall(name)
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _NotACall("**kwargs")
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise _NotACall(kw.arg) from None
    try:
        json.dumps(args)
    except (TypeError, ValueError):  # tuples are fine, sets/bytes/complex are not JSON
        raise _NotACall(name) from None
    return ToolCall(name, json.loads(json.dumps(args)))


# ---- special tokens in engine text -----------------------------------------------------------------
def restore_specials(text: str, token: int, python_tag_id: int | None, eom_id: int | None) -> str:
    """The event text with `<|python_tag|>` / `<|eom_id|>` put back (the detokenizer skips them)."""
    if python_tag_id is not None and token == python_tag_id and PYTHON_TAG not in text:
        return text + PYTHON_TAG
    if eom_id is not None and token == eom_id and EOM not in text:
        return text + EOM
    return text
