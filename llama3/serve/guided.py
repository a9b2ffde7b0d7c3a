"""The request fields that constrain the output: OpenAI's `response_format` and vLLM's `guided_*`.

`response_format` is {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema":
{"name", "schema", "strict", "description"}} (what the openai client's `.parse()` sends);
`guided_json`, `guided_regex`, `guided_grammar` and `guided_choice` are vLLM's extra parameters.
At most one of them may constrain a request.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from ..errors import InvalidRequestError
from ..structured.spec import GuidedDecoding

#: characters a regular expression treats as syntax (escaped in guided_choice alternatives)
_REGEX_META = set("\\.+*?()|[]{}^$-")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonSchemaFormat(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64)
    description: StrictStr | None = None
    #: None = any JSON object (OpenAI allows leaving it out)
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class GuidedFields(BaseModel):
    """Mixed into both request bodies."""

    response_format: ResponseFormat | None = Field(None, discriminator="type")
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_grammar: StrictStr | None = None
    guided_choice: list[StrictStr] | None = Field(None, min_length=1)

    def guided_decoding(self) -> GuidedDecoding | None:
        """The one constraint the request asks for (None = free text)."""
        asked: list[tuple[str, GuidedDecoding]] = []
        rf = self.response_format
        if isinstance(rf, JsonObjectFormat):
            asked.append(("response_format", GuidedDecoding(json_object=True)))
        elif isinstance(rf, JsonSchemaResponseFormat):
            schema = rf.json_schema.json_schema
            g = GuidedDecoding(json_schema=schema) if schema else GuidedDecoding(json_object=True)
            asked.append(("response_format", g))
        if self.guided_json is not None:
            g = GuidedDecoding(json_schema=_schema(self.guided_json), param="guided_json")
            asked.append(("guided_json", g))
        if self.guided_regex is not None:
            asked.append(("guided_regex", GuidedDecoding(regex=self.guided_regex)))
        if self.guided_grammar is not None:
            asked.append(("guided_grammar", GuidedDecoding(grammar=self.guided_grammar)))
        if self.guided_choice is not None:
            g = GuidedDecoding(regex=_choice_regex(self.guided_choice), param="guided_choice")
            asked.append(("guided_choice", g))
        if len(asked) > 1:
            names = ", ".join(n for n, _ in asked)
            raise InvalidRequestError(
                f"more than one output constraint given ({names})",
                "send only one of response_format, guided_json, guided_regex, guided_grammar, "
                "guided_choice",
                param=asked[1][0],
            )
        return asked[0][1] if asked else None


def _schema(v: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    try:
        parsed = json.loads(v)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(
            f"guided_json is not valid JSON: {e}", "send a JSON schema object", param="guided_json"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError(
            "guided_json must be a JSON schema object", "send an object", param="guided_json"
        )
    return parsed


def _choice_regex(choices: list[str]) -> str:
    if any(not c for c in choices):
        raise InvalidRequestError(
            "guided_choice entries must be non-empty strings",
            "remove the empty choice",
            param="guided_choice",
        )
    alts = ("".join("\\" + ch if ch in _REGEX_META else ch for ch in c) for c in choices)
    return "(" + "|".join(alts) + ")"
