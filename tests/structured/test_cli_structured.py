"""`llama3 generate --json-schema FILE` as a user runs it (a real subprocess on the tiny model),
the one-line error for an unsupported schema, and the flags' own checks of a missing or non-JSON
schema file (before any model loads)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import jsonschema
import pytest

from llama3.cli.structured import add_structured_arguments, guided_from_args
from llama3.errors import InvalidRequestError
from llama3.structured import GuidedDecoding

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
    },
    "required": ["id", "ok"],
    "additionalProperties": False,
}


def generate(model, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llama3",
            "generate",
            "--model",
            str(model),
            "--max-seq-len",
            "128",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_json_schema_file(tiny, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    r = generate(
        tiny.path("3.1", "hf"), "A", "--json-schema", str(schema), "--temperature", "1",
        "--seed", "1", "--max-tokens", "40", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["finish_reason"] == "stop"
    jsonschema.validate(json.loads(rec["text"]), SCHEMA)


def test_unsupported_schema_is_a_one_line_error(tiny, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text('{"type": "object", "if": {}}')
    r = generate(tiny.path("3.1", "hf"), "Hi", "--json-schema", str(path), "--max-tokens", "4")
    assert r.returncode == 2, r.stderr
    assert '"if"' in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read --json-schema"),
        ("{not json", "is not valid JSON"),
        ("[1]", "not an object"),
    ],
)
def test_bad_schema_files_are_refused_before_loading(tmp_path, content, says):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    p = argparse.ArgumentParser()
    add_structured_arguments(p)
    with pytest.raises(InvalidRequestError, match=re.escape(says)):
        guided_from_args(p.parse_args(["--json-schema", str(path)]))


def test_regex_and_grammar_flags(tmp_path):
    p = argparse.ArgumentParser()
    add_structured_arguments(p)
    assert guided_from_args(p.parse_args(["--regex", "a+"])) == GuidedDecoding(regex="a+")
    g = tmp_path / "g.lark"
    g.write_text('start: "x"')
    assert guided_from_args(p.parse_args(["--grammar", str(g)])) == GuidedDecoding(
        grammar='start: "x"'
    )
    assert guided_from_args(p.parse_args([])) is None
