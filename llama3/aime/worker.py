"""The worker loop: AIME jobs in, through the continuous-batching engine, results out.

Unlike AIME's own worker, which runs a static batch to its end before asking for more, a job here
joins the running batch as soon as a slot is free: the worker keeps one long poll open with
`max_job_batch` = free slots, starts each job on the engine when it arrives, and posts its result
the moment it ends. One progress task reports every running job at most 5 times a second (one
request in flight; each job's text is cumulative) and aborts the jobs the server marks canceled.
SIGINT / SIGTERM stop the polling and let running jobs finish; a second signal aborts them.
Stopping never hangs up an open long poll while the server may still hold one of our results for
its client: the AIME server takes a dropped poll for a worker gone offline and lapses every job of
that worker it has not handed out yet, delivered results included.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from ..engine.async_engine import AsyncLLMEngine
from ..errors import Llama3Error
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.chat_format import ChatFormatter
from .client import AimeClient
from .prompts import Defaults, prompt_ids, sampling_params
from .protocol import Job, JobOutput, canceled_job_ids, progress_item, result_body

log = logging.getLogger(__name__)

#: at most this many progress POSTs per second (AIME's PROGRESS_UPDATES_PER_SEC)
PROGRESS_PER_SEC = 5
#: after a second signal, seconds to wait for aborted jobs' results before giving up on them
FORCE_GRACE_S = 5.0
#: a result delivered this recently may not have reached its client yet (AIME clients poll)
COLLECT_S = 10.0

CANCELED = "the job was canceled by the API server"
STOPPED = "the worker was stopped before the job finished"


@dataclass(frozen=True)
class WorkerConfig:
    max_batch: int
    model_name: str
    defaults: Defaults = Defaults()
    quiet: bool = False


@dataclass(eq=False)
class _Running:
    """One job on the engine: what it produced so far and whether progress has news."""

    job: Job
    request_id: str
    started: float = field(default_factory=time.monotonic)
    prompt_length: int = 0
    text: str = ""
    tokens: int = 0
    #: new tokens since the last progress report
    dirty: bool = False
    #: generation ended (normally or not); progress no longer includes the job
    ended: bool = False
    error: str | None = None


class AimeWorker:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        tokenizer: BaseTokenizer,
        formatter: Callable[[], ChatFormatter],
        client: AimeClient,
        config: WorkerConfig,
        out: TextIO | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.client = client
        self.config = config
        self._out = out or sys.stderr
        self._running: dict[str, _Running] = {}  # by job id
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = False
        #: when the last result was delivered (monotonic)
        self._delivered = -COLLECT_S
        # held while a progress POST is in flight, so a job's result never overtakes its progress
        self._progress_lock = asyncio.Lock()
        self._ids = itertools.count()
        self.jobs_done = 0

    # ---- life cycle ------------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if not self.config.quiet:
            print(line, file=self._out, flush=True)

    def request_stop(self) -> None:
        """First call: finish running jobs, take no new ones. Second call: abort them too."""
        if not self._stop.is_set():
            self._stop.set()
            n = len(self._running)
            self._say(
                f"stopping: finishing {n} running job{'s' if n != 1 else ''} "
                "(signal again to abort them)"
                if n
                else "stopping"
            )
            return
        if not self._force:
            self._force = True
            self._say(f"aborting {len(self._running)} running jobs")
            for r in list(self._running.values()):
                if not r.ended:
                    r.error = STOPPED
                    self.engine.abort(r.request_id)

    async def run(self) -> int:
        """Serve jobs until stopped; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        self.engine.start(loop)
        progress = asyncio.create_task(self._progress_loop())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await self._poll_loop(stopping)
            await self._drain()
        finally:
            progress.cancel()
            stopping.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self.engine.stop(timeout=10)
        return 0

    async def _poll_loop(self, stopping: asyncio.Task[bool]) -> None:
        while not self._stop.is_set():
            free = self.config.max_batch - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                freed = asyncio.create_task(self._slot_freed.wait())
                await asyncio.wait({freed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                freed.cancel()
                continue
            poll = asyncio.create_task(self.client.request_jobs(free))
            await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done() and not await self._poll_ends(poll):
                return
            for job in poll.result():  # a refused key raises here and ends the worker
                self._start(job)

    async def _poll_ends(self, poll: asyncio.Task) -> bool:
        """Stopping with a long poll open: whether it ended with an answer. With jobs running or
        a result just delivered, the poll ends on its own (the server's request timeout; a job it
        brings is run, not lost), as hanging it up would lapse those jobs; idle, or after a
        second signal, it is hung up."""
        if self._running or time.monotonic() - self._delivered < COLLECT_S:
            while not poll.done() and not self._force:
                await asyncio.wait({poll}, timeout=0.2)
            if poll.done():
                return True
        poll.cancel()
        try:
            await poll
        except asyncio.CancelledError:
            pass
        return poll.done() and not poll.cancelled()

    async def _drain(self) -> None:
        while self._tasks:
            if self._force:
                _, pending = await asyncio.wait(set(self._tasks), timeout=FORCE_GRACE_S)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
            await asyncio.wait(set(self._tasks), timeout=0.5)

    # ---- one job ---------------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        r = _Running(job, f"aime-{next(self._ids)}-{job.job_id}")
        self._running[job.job_id] = r
        task = asyncio.create_task(self._run_job(r))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, r: _Running) -> None:
        try:
            await self._generate(r)
        except Llama3Error as e:  # a bad prompt, a context overflow, a failed engine step
            r.error = str(e)
        except Exception as e:  # report it as the job's error rather than lose the job
            log.exception("job %s failed", r.job.job_id)
            r.error = f"internal error: {type(e).__name__}: {e}"
        finally:
            r.ended = True
            self._running.pop(r.job.job_id, None)
            self._slot_freed.set()
        await self._send_result(r)

    async def _generate(self, r: _Running) -> None:
        ids = prompt_ids(r.job, self.tokenizer, self.formatter)
        params = sampling_params(r.job, self.config.defaults)
        r.prompt_length = len(ids)
        stream = self.engine.add_request(ids, params, r.request_id)
        if self._force:  # stopped while the prompt was being encoded
            self.engine.abort(r.request_id)
        async for out in stream:
            r.tokens += 1  # the stop token counts: it was generated (as AIME counts)
            r.text += out.event.text
            r.dirty = True
        if stream.aborted and r.error is None:
            r.error = CANCELED

    def _output(self, r: _Running) -> JobOutput:
        return JobOutput(
            text=r.text,
            num_generated_tokens=r.tokens,
            prompt_length=r.prompt_length,
            max_seq_len=self.engine.max_model_len,
            model_name=self.config.model_name,
            error=r.error,
        )

    async def _send_result(self, r: _Running) -> None:
        async with self._progress_lock:  # wait out a progress POST that may still carry this job
            pass
        ok, msg = await self.client.post_result(
            result_body(self.client.who, r.job, self._output(r))
        )
        self._delivered = time.monotonic()
        self.jobs_done += 1
        took = time.monotonic() - r.started
        what = f"error: {r.error}" if r.error else f"{r.tokens} tokens"
        self._say(
            f"job {r.job.job_id}: {what} in {took:.1f} s (prompt {r.prompt_length} tokens)"
            + ("" if ok else f"; the server did not take the result: {msg}")
        )

    # ---- progress --------------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        """Sleeping 1/PROGRESS_PER_SEC after each POST keeps the rate and one request in flight."""
        while True:
            await asyncio.sleep(1 / PROGRESS_PER_SEC)
            async with self._progress_lock:
                news = [r for r in self._running.values() if r.dirty and not r.ended]
                if not news:
                    continue
                for r in news:
                    r.dirty = False
                who = self.client.who
                reply = await self.client.post_progress(
                    [progress_item(who, r.job, self._output(r)) for r in news]
                )
            for job_id in canceled_job_ids(reply):
                r2 = self._running.get(job_id)
                if r2 is not None and not r2.ended:
                    r2.error = CANCELED
                    self.engine.abort(r2.request_id)
