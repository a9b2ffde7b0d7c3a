"""HTTP to the AIME API Server: job long-polls, progress, results, and riding out outages.

Every call is a JSON POST. When the server cannot be reached (connection refused or reset, 503),
the caller waits in `wait_online`, which polls `/worker_check_server_status` once a second and
shows one "Connection to API Server … offline … Trying to reconnect…" line for all callers at
once; the call is then retried, so a server restart costs no job result. A refused key or a
missing job type ends the worker with a clear error instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import httpx

from ..errors import Llama3Error
from .protocol import (
    Job,
    WorkerIdentity,
    job_request_body,
    parse_job_reply,
    result_accepted,
    status_body,
)

#: seconds between reachability checks while the server is offline
RETRY_INTERVAL_S = 1.0
#: on a non-terminal output, how often the offline line is repeated
OFFLINE_REPEAT_S = 10.0
#: unexplained warnings in a row before the worker gives up (AIME's interface allows 3)
MAX_WARNINGS = 3


class WorkerNotAuthorized(Llama3Error):
    """The server refused the worker's auth key: a configuration error, so exit code 2."""

    exit_code = 2


class JobTypeUnknown(Llama3Error):
    """The server has no endpoint for the worker's job type."""

    exit_code = 2


class ServerRefused(Llama3Error):
    """The server keeps answering the job request with an error or warning."""


_OFFLINE_ERRORS = (httpx.TransportError,)  # connect, read, write, protocol, pool errors


class AimeClient:
    def __init__(
        self,
        api_server: str,
        who: WorkerIdentity,
        *,
        out: TextIO | None = None,
    ) -> None:
        self.url = api_server.rstrip("/")
        self.who = who
        self._out = out or sys.stderr
        # The long poll is answered by the server after its own timeout (30-60 s); the read
        # timeout only has to be longer than that.
        poll_s = max(float(who.request_timeout), 60.0) * 2
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(30.0, read=poll_s),
            limits=httpx.Limits(max_connections=16),
        )
        self._reconnect = asyncio.Lock()
        self._online_epoch = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    def identify(self, who: WorkerIdentity) -> None:
        """Replace the identity (the model's fields are known only after it loads)."""
        self.who = who

    # ---- plumbing --------------------------------------------------------------------------------
    def _say(self, line: str, *, end: str = "\n") -> None:
        print(line, end=end, file=self._out, flush=True)

    async def _post(self, route: str, body: Any, timeout: float | None = None) -> httpx.Response:
        kwargs: dict[str, Any] = {"json": body}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return await self._http.post(route, **kwargs)

    async def _post_online(
        self, route: str, body: Any, timeout: float | None = None, *, long_poll: bool = False
    ) -> httpx.Response:
        """`_post`, waiting out outages (connection errors, 503) and trying again. A long poll's
        read timeout is not an outage: it is raised for the caller."""
        while True:
            try:
                resp = await self._post(route, body, timeout)
            except httpx.ReadTimeout:
                if long_poll:
                    raise
                await self.wait_online()
                continue
            except _OFFLINE_ERRORS:
                await self.wait_online()
                continue
            if resp.status_code != 503:
                return resp
            await self.wait_online()

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            return None

    async def status(self) -> dict[str, Any] | None:
        """The server's view of this worker ({logged_in, job_type_present, key_valid}), or None
        while it is unreachable or still starting."""
        try:
            resp = await self._post("/worker_check_server_status", status_body(self.who), 10.0)
        except _OFFLINE_ERRORS:
            return None
        body = self._json(resp)
        if resp.status_code != 200 or not isinstance(body, dict) or "key_valid" not in body:
            return None
        return body

    async def wait_online(self) -> None:
        """Return once the server answers again; one caller reports, the others wait with it."""
        epoch = self._online_epoch
        async with self._reconnect:
            if self._online_epoch != epoch:
                return  # someone else saw the server come back while we waited for the lock
            if await self.status() is not None:
                self._online_epoch += 1
                return
            since = time.monotonic()
            tty = self._out.isatty()
            shown = -OFFLINE_REPEAT_S
            while True:
                offline = time.monotonic() - since
                if tty or offline - shown >= OFFLINE_REPEAT_S:
                    shown = offline
                    self._say(
                        f"Connection to API Server {self.url} offline for "
                        f"{timedelta(seconds=int(offline))}. Trying to reconnect...",
                        end="\r" if tty else "\n",
                    )
                await asyncio.sleep(RETRY_INTERVAL_S)
                if await self.status() is not None:
                    break
            self._online_epoch += 1
            self._say(f"{'' if not tty else chr(10)}Connection to API Server {self.url} is back.")

    async def check_authorized(self) -> None:
        """Fail fast (before the model loads) on a wrong key or job type; waits while offline."""
        while True:
            st = await self.status()
            if st is not None:
                self._raise_for_status(st)
                return
            await self.wait_online()

    def _raise_for_status(self, st: dict[str, Any], msg: str = "") -> None:
        jt = self.who.job_type
        if st.get("job_type_present") is False:
            raise JobTypeUnknown(
                f"the API server at {self.url} has no endpoint for job type {jt!r}",
                "pass the job_type of the endpoint's [WORKER] section with --job-type",
            )
        if st.get("key_valid") is False:
            raise WorkerNotAuthorized(
                f"Worker not authorized: the API server at {self.url} refused the auth key "
                f"for job type {jt!r}" + (f" ({msg})" if msg else ""),
                "pass the [WORKER] auth_key of the endpoint's config with --api-auth-key",
            )

    # ---- jobs ------------------------------------------------------------------------------------
    async def request_jobs(self, max_job_batch: int) -> list[Job]:
        """Long-poll for up to `max_job_batch` jobs; [] when the server had none in its timeout
        (the caller asks again, with its then free slots)."""
        warnings = 0
        while True:
            try:
                resp = await self._post_online(
                    "/worker_job_request", job_request_body(self.who, max_job_batch), long_poll=True
                )
            except httpx.ReadTimeout:
                return []
            reply = parse_job_reply(self._json(resp))
            if resp.status_code == 200 and reply.cmd == "job":
                return list(reply.jobs)
            if resp.status_code == 200 and reply.cmd == "no_job":
                return []
            # An error, a warning, `null` (the answer to a bad key) or a 500 (an unknown job
            # type): the status route says which, if it is one we can name.
            st = await self.status()
            if st is None:
                await self.wait_online()
                continue
            self._raise_for_status(st, reply.msg)
            if reply.cmd == "error" and "not authorized" in reply.msg.lower():
                raise WorkerNotAuthorized(
                    f"{reply.msg} (API server {self.url})",
                    "pass the [WORKER] auth_key of the endpoint's config with --api-auth-key",
                )
            warnings += 1
            if warnings > MAX_WARNINGS:
                raise ServerRefused(
                    f"the API server at {self.url} keeps refusing job requests: "
                    f"{reply.msg or f'HTTP {resp.status_code}'}",
                    "check the server's log and its endpoint configuration",
                )
            await asyncio.sleep(RETRY_INTERVAL_S)

    async def post_progress(self, items: list[dict[str, Any]]) -> Any:
        """One progress POST (a list of job items); its reply, or None if it did not arrive.
        Progress is not retried: the next update supersedes it."""
        try:
            resp = await self._post("/worker_job_progress", items, 10.0)
        except _OFFLINE_ERRORS:
            return None
        return self._json(resp)

    async def post_result(self, body: dict[str, Any]) -> tuple[bool, str]:
        """Deliver a job result, waiting out server outages (cancel the call to give up).
        Returns (accepted, the server's message when it was not)."""
        resp = await self._post_online("/worker_job_result", body, 30.0)
        if resp.status_code != 200:
            return False, f"HTTP {resp.status_code}"
        return result_accepted(self._json(resp))
