"""Structured output through the official `openai` client against a real `llama3 serve` (SmolLM2):
`response_format` json_schema (and `.parse()` with a pydantic model) at temperature 1 over 50
concurrent seeded requests, every answer valid per `jsonschema`; schema, regex and plain requests
batched together get what each gets alone; streaming, max_tokens, vLLM's guided_* fields on both
endpoints, and a 400 naming an unsupported schema keyword."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "capital": {"type": "boolean"},
        "climate": {"enum": ["cold", "mild", "hot"]},
    },
    "required": ["city", "population", "capital", "climate"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a city you like as JSON."}]
FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


class City(BaseModel):
    city: str = Field(max_length=16)
    population: int = Field(ge=0, le=100000000)
    capital: bool


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def _chat(client, model_id, seed, **kw):
    kw.setdefault("max_tokens", 80)
    return client.chat.completions.create(
        model=model_id, messages=ASK, temperature=1.0, seed=seed, **kw
    ).choices[0]


def test_50_concurrent_sampled_answers_all_validate(client, model_id):
    with ThreadPoolExecutor(16) as pool:
        choices = list(
            pool.map(lambda s: _chat(client, model_id, s, response_format=FORMAT), range(50))
        )
    for c in choices:
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), SCHEMA)
    assert len({c.message.content for c in choices}) > 10  # sampled, not one forced answer


def test_parse_with_a_pydantic_model(client, model_id):
    r = client.chat.completions.parse(
        model=model_id, messages=ASK, response_format=City, temperature=1.0, seed=7, max_tokens=80
    )
    msg = r.choices[0].message
    assert isinstance(msg.parsed, City)
    assert msg.parsed == City.model_validate_json(msg.content)


def test_mixed_batch_equals_each_alone(client, model_id):
    """Schema, regex, choice and plain requests sent together (one continuous batch) each get
    the answer they get alone, seeded at temperature 1."""
    kinds = [
        {"response_format": FORMAT},
        {"extra_body": {"guided_regex": r"[A-Z][a-z]{2,9}, [0-9]{1,3} km"}},
        {"extra_body": {"guided_choice": ["north", "south", "east", "west"]}},
        {"max_tokens": 12},
        {"response_format": {"type": "json_object"}, "max_tokens": 40},
    ]
    alone = [_chat(client, model_id, 100 + i, **kw) for i, kw in enumerate(kinds)]
    with ThreadPoolExecutor(len(kinds)) as pool:
        together = list(
            pool.map(lambda ik: _chat(client, model_id, 100 + ik[0], **ik[1]), enumerate(kinds))
        )
    for a, t in zip(alone, together):
        assert (t.message.content, t.finish_reason) == (a.message.content, a.finish_reason)
    jsonschema.validate(json.loads(together[0].message.content), SCHEMA)
    assert re.fullmatch(r"[A-Z][a-z]{2,9}, [0-9]{1,3} km", together[1].message.content)
    assert together[2].message.content in ("north", "south", "east", "west")


def test_streaming_gives_the_same_valid_json(client, model_id):
    want = _chat(client, model_id, 5, response_format=FORMAT)
    stream = client.chat.completions.create(
        model=model_id,
        messages=ASK,
        temperature=1.0,
        seed=5,
        max_tokens=80,
        response_format=FORMAT,
        stream=True,
    )
    chunks = [c.choices[0] for c in stream if c.choices]
    text = "".join(c.delta.content or "" for c in chunks)
    assert len([c for c in chunks if c.delta.content]) > 3  # streamed in pieces
    assert text == want.message.content and chunks[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_max_tokens_cuts_the_answer(client, model_id):
    full = _chat(client, model_id, 9, response_format=FORMAT)
    cut = client.chat.completions.create(
        model=model_id, messages=ASK, temperature=1.0, seed=9, max_tokens=6, response_format=FORMAT
    )
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 6
    assert full.message.content.startswith(cut.choices[0].message.content)


def test_completions_take_guided_fields_and_response_format(client, model_id):
    r = client.completions.create(
        model=model_id,
        prompt="The answer is",
        max_tokens=10,
        temperature=1.0,
        seed=1,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert r.choices[0].text in ("yes", "no") and r.choices[0].finish_reason == "stop"
    r = client.completions.create(
        model=model_id,
        prompt="A city as JSON:",
        max_tokens=80,
        temperature=1.0,
        seed=2,
        extra_body={"response_format": FORMAT},
    )
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)
    r = client.completions.create(
        model=model_id,
        prompt="Yes or no?",
        max_tokens=10,
        temperature=0,
        extra_body={"guided_grammar": 'root ::= "Y" "e"+ "s"'},
    )
    assert re.fullmatch("Ye+s", r.choices[0].text)


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"guided_json": {"type": "array", "uniqueItems": True}}, "guided_json", "uniqueItems"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"not": {}}},
                }
            },
            "response_format",
            '"not"',
        ),
        ({"guided_regex": "(unclosed"}, "guided_regex", "regular expression"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "more than one"),
        ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ],
)
def test_bad_constraints_are_400_naming_them(client, model_id, extra, param, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=ASK, max_tokens=4, extra_body=extra)
    err = e.value.body
    assert err["param"] == param and says in err["message"], err
