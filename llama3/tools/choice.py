"""`tool_choice` as a plan: which tools the prompt offers, whether the answer is parsed, and
the constraint that forces a call ("required" or a named function).

A forced call is one JSON object `{"name": ..., "parameters": {...}}` whose parameters validate
against that tool's schema (llguidance enforces it token by token), which `parse_answer` reads
back. "none" offers no tools and parses nothing; "auto" offers them and parses the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from ..structured.spec import GuidedDecoding
from .spec import Tool, parse_tools

_CHOICE_HINT = 'use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...] = ()
    #: "auto", "none", "required", or the name of the one function to call
    choice: str = "auto"
    parallel: bool = True

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the prompt shows (none for tool_choice "none")."""
        return () if self.choice == "none" else self.tools

    @property
    def parses(self) -> bool:
        return bool(self.offered)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.offered]

    @property
    def forced(self) -> bool:
        return bool(self.tools) and self.choice not in ("auto", "none")

    def guided(self) -> GuidedDecoding | None:
        if not self.forced:
            return None
        pick = self.tools if self.choice == "required" else [self._named()]
        variants = [_call_schema(t) for t in pick]
        schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        # a schema the grammar engine refuses is a tool's parameters: the field to fix is `tools`
        return GuidedDecoding(json_schema=schema, param="tools")

    def _named(self) -> Tool:
        return next(t for t in self.tools if t.name == self.choice)


def _call_schema(t: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": t.name}, "parameters": t.parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def tool_plan(
    tools: Sequence[Any] | None, tool_choice: Any = None, parallel: Any = None
) -> ToolPlan:
    """Validate `tools` / `tool_choice` / `parallel_tool_calls` into a `ToolPlan`."""
    parsed = parse_tools(tools)
    choice = "auto" if parsed else "none"
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice not in ("auto", "none", "required"):
                raise InvalidRequestError(
                    f"unknown tool_choice {tool_choice!r}", _CHOICE_HINT, param="tool_choice"
                )
            choice = tool_choice
        elif isinstance(tool_choice, dict):
            fn = tool_choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if tool_choice.get("type") != "function" or not isinstance(name, str):
                raise InvalidRequestError(
                    "tool_choice object must be {'type': 'function', 'function': {'name': ...}}",
                    _CHOICE_HINT,
                    param="tool_choice",
                )
            choice = name
        else:
            raise InvalidRequestError(
                f"tool_choice must be a string or an object, got {type(tool_choice).__name__}",
                _CHOICE_HINT,
                param="tool_choice",
            )
    if choice not in ("auto", "none"):
        if not parsed:
            raise InvalidRequestError(
                f"tool_choice {choice!r} needs tools",
                "send tools, or drop tool_choice",
                param="tool_choice",
            )
        if choice != "required" and choice not in {t.name for t in parsed}:
            raise InvalidRequestError(
                f"tool_choice names {choice!r}, which is not among the tools",
                f"name one of: {', '.join(t.name for t in parsed)}",
                param="tool_choice",
            )
    return ToolPlan(tuple(parsed), choice, parallel is not False)
