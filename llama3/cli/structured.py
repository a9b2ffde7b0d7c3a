"""`--json-schema FILE` / `--regex` / `--grammar FILE`: the output constraint of `llama3 generate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidRequestError
from ..structured.spec import GuidedDecoding


def add_structured_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured output (one at most)").add_mutually_exclusive_group()
    g.add_argument("--json-schema", metavar="FILE", help="output one JSON value valid against it")
    g.add_argument("--json-object", action="store_true", help="output one JSON object")
    g.add_argument("--regex", help="output text matching this regular expression")
    g.add_argument("--grammar", metavar="FILE", help="output text of this Lark or GBNF grammar")


def _read(flag: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequestError(
            f"cannot read {flag} {path}: {e}", f"pass a readable UTF-8 file to {flag}"
        ) from None


def guided_from_args(args: argparse.Namespace) -> GuidedDecoding | None:
    """The constraint the flags ask for; an unreadable or non-JSON schema file is an error here."""
    if args.json_schema:
        text = _read("--json-schema", args.json_schema)
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(
                f"--json-schema {args.json_schema} is not valid JSON: {e}",
                "pass a file holding one JSON schema object",
            ) from None
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                f"--json-schema {args.json_schema} holds a {type(schema).__name__}, not an object",
                'a JSON schema is an object such as {"type": "object", ...}',
            )
        return GuidedDecoding(json_schema=schema)
    if args.json_object:
        return GuidedDecoding(json_object=True)
    if args.regex is not None:
        return GuidedDecoding(regex=args.regex)
    if args.grammar:
        return GuidedDecoding(grammar=_read("--grammar", args.grammar))
    return None
