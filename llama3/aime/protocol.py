"""The AIME API Server's worker protocol as pure functions: request bodies out, replies in.

A worker pulls jobs (`POST /worker_job_request`, a long poll), reports progress
(`POST /worker_job_progress`, a list of per-job items) and posts one result per job
(`POST /worker_job_result`). Field names follow the server (aime-api-server 0.9.6) and its worker
interface (0.9.12); nothing here does I/O, so every shape is unit-testable on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: the job type the `llama3_chat` endpoint's [WORKER] section names
DEFAULT_JOB_TYPE = "llama3"


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is: sent with every job request (the server logs it in from these)."""

    #: the worker's name (`auth`), unique per worker process
    name: str
    auth_key: str
    job_type: str = DEFAULT_JOB_TYPE
    #: the interface version string (the server stores it as `interface_version`)
    version: str = ""
    worker_version: str = ""
    #: seconds our HTTP client waits for a long poll; the server answers `no_job` before that
    request_timeout: int = 60
    gpu_name: str = "CPU"
    num_gpus: int = 1
    model_label: str = "Unknown"
    model_quantization: str = "Unknown"
    model_size: str = "Unknown"
    model_family: str = "Llama"
    model_type: str = "LLM"
    model_repo_name: str = "Unknown"
    framework: str = "PyTorch"
    framework_version: str = ""
    pytorch_version: str = ""


def job_request_body(who: WorkerIdentity, max_job_batch: int) -> dict[str, Any]:
    """Body of `/worker_job_request`: carrying `version` logs the worker in on the fly."""
    if max_job_batch < 1:
        raise ValueError(f"max_job_batch must be at least 1, got {max_job_batch}")
    return {
        "auth": who.name,
        "job_type": who.job_type,
        "auth_key": who.auth_key,
        "version": who.version,
        "worker_version": who.worker_version,
        "gpu_name": who.gpu_name,
        "num_gpus": who.num_gpus,
        "request_timeout": who.request_timeout,
        "model_label": who.model_label,
        "model_quantization": who.model_quantization,
        "model_size": who.model_size,
        "model_family": who.model_family,
        "model_type": who.model_type,
        "model_repo_name": who.model_repo_name,
        "max_job_batch": max_job_batch,
        "framework": who.framework,
        "framework_version": who.framework_version,
        "pytorch_version": who.pytorch_version,
    }


def status_body(who: WorkerIdentity) -> dict[str, Any]:
    """Body of `/worker_check_server_status` (answers logged_in / job_type_present / key_valid)."""
    return {"auth": who.name, "job_type": who.job_type, "auth_key": who.auth_key}


@dataclass(frozen=True)
class Job:
    """One job as the server dispatched it (the endpoint's inputs with its defaults filled in)."""

    job_id: str
    start_time: float | None = None
    start_time_compute: float | None = None
    #: chat messages ({"role", "content"}); None when the client sent none
    chat_context: list[Any] | None = None
    #: plain-text context (the endpoint's alternative to chat_context)
    text_context: str | None = None
    #: the new user text: a user turn after chat_context, else appended to the plain text
    prompt_input: str = ""
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    max_gen_tokens: int | None = None
    #: everything the server sent, for fields this dataclass does not name
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class JobReply:
    """A parsed `/worker_job_request` answer. cmd: "job", "no_job", "error", "warning" or
    "invalid" (the body was not a JSON object: the server answers `null` to a bad key)."""

    cmd: str
    jobs: tuple[Job, ...] = ()
    msg: str = ""


def _number(v: Any, kind: type) -> Any:
    """A numeric job field or None: the server validates types, but a hand-made job may not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return kind(v) if kind is float or float(v).is_integer() else None


def parse_job(data: dict[str, Any]) -> Job:
    """One entry of a job reply's `job_data` list."""
    chat = data.get("chat_context")
    text = data.get("text_context")
    prompt = data.get("prompt_input")
    return Job(
        job_id=str(data.get("job_id", "")),
        start_time=_number(data.get("start_time"), float),
        start_time_compute=_number(data.get("start_time_compute"), float),
        chat_context=chat if chat not in (None, "") else None,
        text_context=text if isinstance(text, str) else None,
        prompt_input=prompt if isinstance(prompt, str) else "",
        top_k=_number(data.get("top_k"), int),
        top_p=_number(data.get("top_p"), float),
        temperature=_number(data.get("temperature"), float),
        max_gen_tokens=_number(data.get("max_gen_tokens"), int),
        raw=dict(data),
    )


def parse_job_reply(body: Any) -> JobReply:
    if not isinstance(body, dict):
        return JobReply("invalid", msg=f"the server answered {str(body)[:80]!r}")
    cmd = str(body.get("cmd", ""))
    msg = str(body.get("msg") or body.get("error_msg") or "")
    if cmd != "job":
        return JobReply(cmd or "invalid", msg=msg)
    data = body.get("job_data", [])
    if isinstance(data, dict):  # servers before batching sent one job as a dict
        data = [data]
    jobs = tuple(parse_job(d) for d in data if isinstance(d, dict) and d.get("job_id"))
    return JobReply("job", jobs, msg)


@dataclass(frozen=True)
class JobOutput:
    """What a job produced so far (progress) or in the end (result)."""

    text: str
    num_generated_tokens: int
    prompt_length: int
    max_seq_len: int
    model_name: str
    error: str | None = None

    @property
    def current_context_length(self) -> int:
        return self.prompt_length + self.num_generated_tokens

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "model_name": self.model_name,
            "num_generated_tokens": self.num_generated_tokens,
            "max_seq_len": self.max_seq_len,
            "current_context_length": self.current_context_length,
            "prompt_length": self.prompt_length,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def _job_echo(who: WorkerIdentity, job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "start_time": job.start_time,
        "start_time_compute": job.start_time_compute,
        "job_type": who.job_type,
        "auth_key": who.auth_key,
        "auth": who.name,
        "version": who.version,
    }


def progress_item(who: WorkerIdentity, job: Job, out: JobOutput) -> dict[str, Any]:
    """One entry of a `/worker_job_progress` list; progress = tokens generated so far."""
    data = out.fields()
    data.update(version=who.version, auth=who.name)
    return _job_echo(who, job) | {"progress": out.num_generated_tokens, "progress_data": data}


def result_body(who: WorkerIdentity, job: Job, out: JobOutput) -> dict[str, Any]:
    """Body of `/worker_job_result`: the outputs plus the job's identity echoed back."""
    return out.fields() | _job_echo(who, job)


def canceled_job_ids(reply: Any) -> set[str]:
    """Job ids a `/worker_job_progress` reply marks `"canceled": true` (newer servers do).

    The reply is a list with one item per progress entry; a server that fails early answers a
    single dict instead, which names no job."""
    items = reply if isinstance(reply, list) else [reply]
    return {
        str(r["job_id"])
        for r in items
        if isinstance(r, dict) and r.get("canceled") is True and r.get("job_id")
    }


def result_accepted(reply: Any) -> tuple[bool, str]:
    """(accepted, message) for a `/worker_job_result` reply ({"cmd": "ok"} or a warning)."""
    if isinstance(reply, dict) and reply.get("cmd") == "ok":
        return True, ""
    if isinstance(reply, dict):
        return False, str(reply.get("msg") or reply.get("error") or reply)
    return False, f"the server answered {str(reply)[:80]!r}"
