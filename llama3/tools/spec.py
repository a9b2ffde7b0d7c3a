"""OpenAI `tools` as dataclasses, the built-in Llama 3.1 tools, and a parsed `ToolCall`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError

#: Llama 3.1's built-in tools (`Tools: ...` in the system header, called after `<|python_tag|>`)
BUILTIN_TOOLS: tuple[str, ...] = ("brave_search", "wolfram_alpha", "code_interpreter")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_HINT = 'pass [{"type": "function", "function": {"name": ..., "parameters": {...}}}, ...]'


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    #: a JSON schema of the arguments object
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_TOOLS

    def openai(self) -> dict[str, Any]:
        """The OpenAI shape the chat templates read (`{"type": "function", "function": ...}`)."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: new_call_id())

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json},
        }


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _bad(msg: str) -> InvalidRequestError:
    return InvalidRequestError(msg, _HINT, param="tools")


def parse_tools(tools: Sequence[Any] | None) -> list[Tool]:
    """Validate an OpenAI `tools` list (or bare built-in names) into `Tool`s."""
    if tools is None:
        return []
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise _bad(f"tools must be a list, got {type(tools).__name__}")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        if isinstance(t, str) and t in BUILTIN_TOOLS:
            out.append(Tool(t))
            continue
        if not isinstance(t, dict):
            raise _bad(f"tools[{i}] must be an object, got {type(t).__name__}")
        if t.get("type", "function") != "function":
            raise _bad(f"tools[{i}].type is {t.get('type')!r}; only 'function' tools exist")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"tools[{i}].function is missing or not an object")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(
                f"tools[{i}].function.name {name!r} is not a valid function name "
                "(letters, digits, _ . -; at most 64)"
            )
        desc = fn.get("description", "") or ""
        if not isinstance(desc, str):
            raise _bad(f"tools[{i}].function.description must be a string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object")
        if params.get("type", "object") != "object":
            raise _bad(f"tools[{i}].function.parameters must describe an object (type 'object')")
        out.append(Tool(name, desc, params))
    names = [t.name for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise _bad(f"tool {dup!r} is defined twice")
    return out
