"""AsyncLLMEngine: the `LLMEngine` stepping on a thread of its own, one asyncio stream per request.

The engine is single-threaded, so every call into it happens on the step thread: `add_request`
validates on the caller's thread (bad requests fail at once, with the typed error) and hands the
built `Sequence` over; aborts are handed over the same way and take effect before the next step.
Each step's token events go back to the event loop in one `call_soon_threadsafe`, so 64 streams
cost one wake-up per step, not 64.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import Llama3Error
from ..generation.params import SamplingParams
from .engine import EngineStats, LLMEngine, RequestOutput
from .sequence import Sequence as EngineSequence

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineDeadError(Llama3Error):
    """The step thread failed; the request it was part of cannot finish."""


@dataclass(frozen=True, slots=True)
class _Aborted:
    """Sentinel for a stream whose request was aborted."""


_ABORTED = _Aborted()


class RequestStream:
    """Token events of one request, in order. Iterate with `async for`; ends after the event with a
    finish reason, or quietly after an abort (`aborted` tells)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[RequestOutput | Exception | _Aborted] = asyncio.Queue()
        self.finished = False
        self.aborted = False

    def _put(self, item: RequestOutput | Exception | _Aborted) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            item = await self._queue.get()
            if isinstance(item, _Aborted):
                self.finished = self.aborted = True
                return
            if isinstance(item, Exception):
                self.finished = True
                raise item
            if item.event.finish_reason is not None:
                self.finished = True
            yield item


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pending: list[tuple[EngineSequence, RequestStream]] = []
        self._aborts: list[str] = []
        self._calls: list[tuple[Callable[[], Any], asyncio.Future]] = []
        self._streams: dict[str, RequestStream] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the step thread; events are delivered on `loop` (default: the running loop)."""
        if self._thread is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="llama3-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let the running requests finish, then end the step thread."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- requests --------------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def add_request(
        self, prompt: Sequence[int], params: SamplingParams, request_id: str, lora_id: int = 0
    ) -> RequestStream:
        """Queue a request (with adapter `lora_id`, 0 = the base); raises the engine's typed
        error at once for a bad one."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running", "restart the server")
        seq = self.engine.make_sequence(prompt, params, request_id, lora_id)
        stream = RequestStream(request_id)
        with self._lock:
            if request_id in self._streams:
                raise Llama3Error(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            self._pending.append((seq, stream))
        self._wakeup.set()
        return stream

    async def generate(
        self, prompt: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's events; leaving the loop early (or being cancelled) aborts it."""
        stream = self.add_request(prompt, params, request_id)
        try:
            async for out in stream:
                yield out
        finally:
            if not stream.finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; its blocks are free before the next step runs."""
        with self._lock:
            self._aborts.append(request_id)
        self._wakeup.set()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the step thread between two steps (what changes the model, such as
        loading an adapter, must not happen during a forward); returns or raises what it does."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running", "restart the server")
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            self._calls.append((fn, fut))
        self._wakeup.set()
        return await fut

    def stats(self) -> EngineStats:
        s = self.engine.stats()
        with self._lock:
            pending = len(self._pending)
        return replace(s, num_waiting=s.num_waiting + pending)

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---- the step thread -------------------------------------------------------------------------
    def _deliver(
        self, items: list[tuple[RequestStream, RequestOutput | Exception | _Aborted]]
    ) -> None:
        if items and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_put_all, items)

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, []
                calls, self._calls = self._calls, []
            items: list[tuple[RequestStream, RequestOutput | Exception | _Aborted]] = []
            for seq, stream in pending:
                try:
                    engine.add_sequence(seq)
                except Exception as e:  # a request the scheduler refuses fails alone
                    self._forget(str(seq.seq_id))
                    items.append((stream, e))
            for rid in aborts:
                engine.abort(rid)
                stream = self._forget(rid)
                if stream is not None:
                    items.append((stream, _ABORTED))
            self._deliver(items)
            for fn, fut in calls:  # after the requests queued before them
                self._answer(fn, fut)
            if not engine.has_unfinished():
                if self._stopping:
                    return
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                outs = engine.step()
            except Exception as e:
                # Fail the requests in the batch, free their blocks, keep serving the next ones.
                log.exception("engine step failed")
                err = EngineDeadError(f"the engine failed: {type(e).__name__}", "retry the request")
                items = []
                for rid in engine.abort_all():
                    stream = self._forget(str(rid))
                    if stream is not None:
                        items.append((stream, err))
                self._deliver(items)
                continue
            items = []
            for rid, err in engine.take_failures():  # requests the step failed alone
                stream = self._forget(rid)
                if stream is not None:
                    items.append((stream, err))
            with self._lock:
                for o in outs:
                    stream = self._streams.get(o.request_id)
                    if stream is None:
                        continue
                    items.append((stream, o))
                    if o.event.finish_reason is not None:
                        del self._streams[o.request_id]
            self._deliver(items)

    def _answer(self, fn: Callable[[], Any], fut: asyncio.Future) -> None:
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_resolve, fut, result, error)

    def _forget(self, request_id: str) -> RequestStream | None:
        with self._lock:
            return self._streams.pop(request_id, None)


def _put_all(items: list[tuple[RequestStream, RequestOutput | Exception | _Aborted]]) -> None:
    for stream, item in items:
        stream._put(item)


def _resolve(fut: asyncio.Future, result: Any, error: Exception | None) -> None:
    if fut.done():  # the caller was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
