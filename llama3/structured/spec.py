"""What a request asks its output to conform to, as the sampling parameters carry it.

Exactly one kind is set. The engine compiles it (cached) into a token mask applied before
sampling; tool calling uses it to enforce `tool_choice` "required" or a named function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class GuidedDecoding:
    #: a JSON schema (as parsed JSON); the output is one JSON value valid against it
    json_schema: dict[str, Any] | None = None
    #: any JSON object (OpenAI's response_format {"type": "json_object"})
    json_object: bool = False
    #: a regular expression the whole output matches
    regex: str | None = None
    #: a grammar (Lark / EBNF, as the grammar engine reads it)
    grammar: str | None = None
    #: the request field it came from, named by compile errors (None: the field of its kind)
    param: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        kinds = [
            k
            for k, v in (
                ("json_schema", self.json_schema is not None),
                ("json_object", self.json_object),
                ("regex", self.regex is not None),
                ("grammar", self.grammar is not None),
            )
            if v
        ]
        if len(kinds) != 1:
            raise InvalidRequestError(
                f"give exactly one output constraint, got {kinds or 'none'}",
                "set one of json_schema, json_object, regex or grammar",
                param="guided",
            )

    @property
    def key(self) -> str:
        """A stable cache key for the compiled constraint."""
        if self.json_schema is not None:
            return "schema:" + json.dumps(self.json_schema, sort_keys=True)
        if self.json_object:
            return "json_object"
        if self.regex is not None:
            return "regex:" + self.regex
        return "grammar:" + str(self.grammar)
