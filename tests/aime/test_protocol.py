"""The wire format against AIME's own code, and the job -> prompt / sampling mapping."""

from __future__ import annotations

import ast

import pytest
from aime_harness import AIME_DIR

from llama3.aime.prompts import Defaults, dialog_of, plain_text_of, sampling_params
from llama3.aime.protocol import (
    Job,
    JobOutput,
    WorkerIdentity,
    canceled_job_ids,
    job_request_body,
    parse_job,
    parse_job_reply,
    progress_item,
    result_body,
)
from llama3.errors import InvalidRequestError

INTERFACE = AIME_DIR / "aime-api-worker-interface" / "aime_api_worker_interface"
WHO = WorkerIdentity(name="host#1_1xCPU", auth_key="k", version="v", worker_version="1")


def _dict_keys_with(source: str, key: str) -> set[str]:
    """Keys of the dict literal in `source` that has `key` (AIME's job request body)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if key in keys:
                return keys
    raise AssertionError(f"no dict with {key!r}")


def test_job_request_sends_every_field_of_aimes_worker_interface():
    src = (INTERFACE / "api_worker_interface.py").read_text()
    assert set(job_request_body(WHO, 3)) == _dict_keys_with(src, "max_job_batch")
    assert job_request_body(WHO, 3)["max_job_batch"] == 3
    with pytest.raises(ValueError):
        job_request_body(WHO, 0)


def test_result_echoes_the_job_and_names_every_endpoint_output():
    job = parse_job({"job_id": "J1", "start_time": 1.5, "start_time_compute": 2.5})
    out = JobOutput("hi", 3, 10, 512, "m", error="bad")
    body = result_body(WHO, job, out)
    outputs = {"text", "num_generated_tokens", "model_name", "max_seq_len"}
    outputs |= {"current_context_length", "error", "prompt_length"}  # the endpoint's [OUTPUTS]
    assert outputs <= set(body)
    assert body["current_context_length"] == 13
    echo = {"job_id": "J1", "start_time": 1.5, "start_time_compute": 2.5, "job_type": "llama3"}
    assert echo.items() <= body.items()
    assert {"auth_key": "k", "auth": "host#1_1xCPU", "version": "v"}.items() <= body.items()
    item = progress_item(WHO, job, JobOutput("hi", 3, 10, 512, "m"))
    assert item["progress"] == 3 and item["progress_data"]["text"] == "hi"
    assert "error" not in item["progress_data"]


def test_replies_are_parsed_defensively():
    assert parse_job_reply(None).cmd == "invalid"  # the 0.9.6 server's answer to a bad key
    assert parse_job_reply({"cmd": "no_job"}).cmd == "no_job"
    r = parse_job_reply({"cmd": "job", "job_data": [{"job_id": "J1", "top_k": 40}, {}]})
    assert [j.job_id for j in r.jobs] == ["J1"] and r.jobs[0].top_k == 40
    # Newer servers flag canceled jobs in the progress reply, one item per job.
    reply = [{"cmd": "ok", "job_id": "J1", "canceled": True}, {"cmd": "ok", "job_id": "J2"}]
    assert canceled_job_ids(reply) == {"J1"}
    assert canceled_job_ids({"success": False}) == set() == canceled_job_ids(None)


def test_chat_context_gets_prompt_input_as_a_user_turn_and_text_parts_joined():
    job = parse_job(
        {
            "job_id": "J",
            "chat_context": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"text": "there"}]},
            ],
            "prompt_input": "More?",
        }
    )
    assert dialog_of(job) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "user", "content": "More?"},
    ]
    as_json = Job("J", chat_context='[{"role": "user", "content": "x"}]')  # a "json"-type input
    assert dialog_of(as_json) == [{"role": "user", "content": "x"}]
    for bad in (
        "not json",
        [{"role": "user"}],
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": 5}],
    ):
        with pytest.raises(InvalidRequestError):
            dialog_of(Job("J", chat_context=bad))


def test_plain_text_keeps_the_text_as_sent():
    # AIME strips the characters of "\nUser:" off both ends; the text here is used unchanged.
    job = Job("J", text_context="User: I am sure\n", prompt_input="Yes")
    assert plain_text_of(job) == "User: I am sure\nYes"
    with pytest.raises(InvalidRequestError, match="no prompt"):
        plain_text_of(Job("J"))


def test_sampling_maps_aimes_off_values_and_fills_defaults():
    p = sampling_params(Job("J", top_p=0.0, top_k=0, temperature=0.0, max_gen_tokens=7), Defaults())
    assert (p.top_p, p.top_k, p.temperature, p.max_tokens) == (1.0, 0, 0.0, 7)
    d = sampling_params(Job("J"), Defaults(temperature=0.5, top_p=0.8, top_k=5, max_gen_tokens=9))
    assert (d.top_p, d.top_k, d.temperature, d.max_tokens) == (0.8, 5, 0.5, 9)
