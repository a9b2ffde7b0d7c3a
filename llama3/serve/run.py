"""One API request in flight: its engine sequences (n choices x prompts), their merged token events,
its deadline, its metrics and its log line.

`Run.submit` queues every sequence (or none: a bad one aborts those already queued); `Run.events`
yields `(choice, RequestOutput)` as the engine produces them and enforces the timeout; `Run.close`
aborts whatever is unfinished (a client that went away) and writes the one log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ..engine.async_engine import AsyncLLMEngine, RequestStream
from ..engine.engine import RequestOutput
from ..errors import ContextLengthExceeded, Llama3Error
from ..generation.params import SamplingParams
from .errors import APIError, from_llama3_error

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("llama3.serve")

_END = object()


def check_room(prompt_tokens: int, max_tokens: int | None, limit: int) -> None:
    """Refuse a request whose prompt plus asked-for tokens cannot fit, naming both numbers."""
    if prompt_tokens >= limit:
        raise ContextLengthExceeded(prompt_tokens, limit)
    if max_tokens is not None and prompt_tokens + max_tokens > limit:
        raise ContextLengthExceeded(prompt_tokens, limit, max_tokens=max_tokens)


class Run:
    def __init__(
        self,
        engine: AsyncLLMEngine,
        metrics: Metrics,
        request_id: str,
        prompts: Sequence[list[int]],
        params: Sequence[SamplingParams],
        *,
        prompt_tokens: int,
        max_queue: int,
        timeout: float | None,
        user: str | None = None,
        lora_id: int = 0,
        model: str = "",
    ) -> None:
        self.engine, self.metrics = engine, metrics
        self.id = request_id
        self.prompts, self.params = list(prompts), list(params)
        #: for usage and metrics: n choices of one prompt count its tokens once, as OpenAI's do
        self.prompt_tokens = prompt_tokens
        self.max_queue, self.timeout, self.user = max_queue, timeout, user
        #: the LoRA adapter its sequences run with (0: the base model)
        self.lora_id = lora_id
        #: the served model's name (the base's, or the adapter's): the per-model metrics' label
        self.model = model
        self._model_tokens = metrics.model_generation_tokens.labels(model)
        self.t0 = time.perf_counter()
        self.deadline = None if timeout is None else self.t0 + timeout
        self.streams: list[RequestStream] = []
        self.first_token_at: float | None = None
        self._last_token_at: list[float | None] = [None] * len(self.prompts)
        self.completion_tokens = 0
        self.outcome = "ok"
        self._closed = False

    def submit(self) -> None:
        waiting = self.engine.stats().num_waiting
        if waiting + len(self.prompts) > self.max_queue:
            self.outcome = "rejected (queue full)"
            raise APIError(
                429,
                f"the server is busy: {waiting} requests are waiting (limit {self.max_queue})",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        try:
            for i, (p, sp) in enumerate(zip(self.prompts, self.params)):
                rid = f"{self.id}-{i}"
                self.streams.append(self.engine.add_request(p, sp, rid, self.lora_id))
        except BaseException:
            self.close("rejected")
            raise
        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        self.metrics.model_requests.labels(self.model).inc()

    async def events(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

        async def pump(i: int, stream: RequestStream) -> None:
            try:
                async for out in stream:
                    queue.put_nowait((i, out))
            except Exception as e:
                queue.put_nowait((i, e))
            finally:
                queue.put_nowait((i, _END))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                left = None if self.deadline is None else self.deadline - time.perf_counter()
                try:
                    i, item = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    raise self._timed_out() from None
                if item is _END:
                    remaining -= 1
                    continue
                if isinstance(item, Llama3Error):  # the engine failed this request
                    self.outcome = f"error {item.http_status}"
                    # an APIError, so a stream whose headers went out ends in an error event
                    raise from_llama3_error(item) from item
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, RequestOutput)
                self._observe(i, item)
                yield i, item
        finally:
            for t in tasks:
                t.cancel()

    def _timed_out(self) -> APIError:
        self.outcome = "timeout"
        for s in self.streams:
            if not s.finished:
                self.engine.abort(s.request_id)
        if self.first_token_at is None:
            return APIError(
                408,
                f"the request waited {self.timeout:g} s without starting (the server is busy)",
                code="timeout",
            )
        return APIError(
            504, f"the request did not finish within {self.timeout:g} s", code="timeout"
        )

    def _observe(self, i: int, out: RequestOutput) -> None:
        now = time.perf_counter()
        if out.event.token < 0:  # a context-full finish carries no token
            return
        self.completion_tokens += 1
        self.metrics.generation_tokens.inc()
        self._model_tokens.inc()
        if self.first_token_at is None:
            self.first_token_at = now
            self.metrics.ttft.observe(now - self.t0)
        last = self._last_token_at[i]
        if last is not None:
            self.metrics.itl.observe(now - last)
        self._last_token_at[i] = now

    def close(self, outcome: str | None = None) -> None:
        """Abort what is unfinished (the client left, or an error) and log the request once."""
        if self._closed:
            return
        self._closed = True
        unfinished = [s for s in self.streams if not s.finished]
        for s in unfinished:
            self.engine.abort(s.request_id)
        if outcome is not None:
            self.outcome = outcome
        elif unfinished and self.outcome == "ok":
            self.outcome = "aborted (client went away)"
        now = time.perf_counter()
        if self.outcome == "ok":
            self.metrics.e2e.observe(now - self.t0)
        ttft = f"{self.first_token_at - self.t0:.3f}s" if self.first_token_at else "-"
        log.info(
            "%s %s prompt_tokens=%d completion_tokens=%d ttft=%s duration=%.3fs%s",
            self.id,
            self.outcome,
            self.prompt_tokens,
            self.completion_tokens,
            ttft,
            now - self.t0,
            f" user={self.user!r}" if self.user else "",
        )
