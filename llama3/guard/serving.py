"""The guard around the OpenAI server's chat route: classify, count, log, refuse.

User turns are classified before anything is queued; an unsafe one gets the refusal message
with `finish_reason: "content_filter"` (HTTP 200), or a 400 with action "error". The answer is
classified once generated and replaced the same way. A streamed answer is held back and judged
every `chunk_tokens` tokens and at its end (the whole text so far each time), so text reaches
the client only after the guard called it safe. The guard is its own `Llama` beside the engine,
run on a worker thread (the event loop keeps serving); one lock serialises its calls.

Every decision is counted in /metrics (`llama3_guard_decisions_total{stage, verdict}`, verdict
`invalid` for an answer that was not a verdict, treated as unsafe;
`llama3_guard_unsafe_categories_total{stage, category}`) and logged as one line with the request
id, stage, verdict, categories and time, never the text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.engine import RequestOutput
from ..errors import Llama3Error
from ..generation.params import TokenEvent
from ..serve.errors import APIError, from_llama3_error
from ..serve.openai_format import Envelope, sse, usage
from .settings import GuardSettings
from .verdict import Verdict

if TYPE_CHECKING:
    from ..serve.metrics import Metrics
    from ..serve.run import Run
    from .guard import Guard

log = logging.getLogger("llama3.serve")

CONTENT_FILTER = "content_filter"


class ServerGuard:
    def __init__(self, settings: GuardSettings, guard: Guard) -> None:
        self.settings, self.guard = settings, guard

    def describe(self) -> str:
        s = self.settings
        return (
            f"Llama Guard {self.guard.version} ({s.model}), {len(self.guard.categories)} "
            f"categories, checks {'+'.join(s.stages)}, action {s.action}"
        )

    async def check(
        self, stage: str, conversation: Sequence[Any], metrics: Metrics, request_id: str
    ) -> Verdict:
        """Classify the last user turn (stage "input") or answer ("output"); count and log it."""
        role = "User" if stage == "input" else "Agent"
        t0 = time.perf_counter()
        try:
            v = await asyncio.to_thread(self.guard.classify, conversation, role)
        except Llama3Error as e:
            raise from_llama3_error(e) from e
        secs = time.perf_counter() - t0
        verdict = "safe" if v.safe else ("unsafe" if v.parsed else "invalid")
        metrics.guard_decisions.labels(stage, verdict).inc()
        for c in v.categories:
            metrics.guard_categories.labels(stage, c.code).inc()
        metrics.guard_seconds.labels(stage).observe(secs)
        log.info(
            "%s guard %s %s%s %.3fs",
            request_id,
            stage,
            verdict,
            f" {','.join(v.codes)}" if v.codes else "",
            secs,
        )
        return v

    def error(self, stage: str, v: Verdict) -> APIError:
        what = "request" if stage == "input" else "answer"
        return APIError(
            400,
            f"the safety filter flagged the {what} ({v.summary()})",
            param="messages",
            code=CONTENT_FILTER,
        )

    # ---- input -----------------------------------------------------------------------------------
    async def screen_input(
        self,
        dialog: Sequence[Any],
        metrics: Metrics,
        env: Envelope,
        *,
        n: int,
        stream: bool,
        include_usage: bool,
        prompt_tokens: int,
    ) -> Response | None:
        """None when the input may go on; else the refusal to send (or a 400 raised)."""
        if not self.settings.checks_input:
            return None
        v = await self.check("input", dialog, metrics, env.id)
        if v.safe:
            return None
        if self.settings.action == "error":
            raise self.error("input", v)
        text, used = self.settings.message, usage(prompt_tokens, 0)
        headers = {"X-Request-Id": env.id}
        if not stream:
            choices = [
                {
                    "index": j,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": CONTENT_FILTER,
                }
                for j in range(n)
            ]
            return JSONResponse(env.wrap("chat.completion", choices, usage=used), headers=headers)

        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(j: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            c = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse(env.wrap("chat.completion.chunk", [c], **extra))

        async def events() -> AsyncIterator[bytes]:
            for j in range(n):
                yield chunk(j, {"role": "assistant", "content": ""})
                yield chunk(j, {"content": text})
                yield chunk(j, {}, CONTENT_FILTER)
            if include_usage:
                yield sse(env.wrap("chat.completion.chunk", [], usage=used))
            yield sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

    # ---- output ----------------------------------------------------------------------------------
    async def screen_answers(
        self, dialog: Sequence[Any], texts: Sequence[str], metrics: Metrics, request_id: str
    ) -> list[int]:
        """The choices whose answer is unsafe (to be replaced), or a 400 raised."""
        if not self.settings.checks_output:
            return []
        flagged = []
        for j, text in enumerate(texts):
            if not text:
                continue
            conv = [*dialog, {"role": "assistant", "content": text}]
            v = await self.check("output", conv, metrics, request_id)
            if not v.safe:
                if self.settings.action == "error":
                    raise self.error("output", v)
                flagged.append(j)
        return flagged

    async def filter_stream(
        self,
        run: Run,
        dialog: Sequence[Any],
        events: AsyncIterator[tuple[int, RequestOutput]],
        metrics: Metrics,
    ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The run's events with each choice held back until the guard has judged its text."""
        if not self.settings.checks_output:
            async for item in events:
                yield item
            return
        try:
            async for item in self._held_back(run, dialog, events, metrics):
                yield item
        finally:  # a client that went away closes the run's own iterator too
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _held_back(
        self,
        run: Run,
        dialog: Sequence[Any],
        events: AsyncIterator[tuple[int, RequestOutput]],
        metrics: Metrics,
    ) -> AsyncIterator[tuple[int, RequestOutput]]:
        every = self.settings.chunk_tokens
        held: dict[int, list[RequestOutput]] = defaultdict(list)
        text: dict[int, str] = defaultdict(str)
        judged: dict[int, str] = defaultdict(str)
        blocked: set[int] = set()
        async for j, out in events:
            if j in blocked:
                continue
            held[j].append(out)
            text[j] += out.event.text
            if out.event.finish_reason is None and len(held[j]) < every:
                continue
            if text[j] != judged[j]:
                judged[j] = text[j]
                conv = [*dialog, {"role": "assistant", "content": text[j]}]
                v = await self.check("output", conv, metrics, run.id)
                if not v.safe:
                    blocked.add(j)
                    held[j].clear()
                    stream = run.streams[j]
                    if not stream.finished:
                        run.engine.abort(stream.request_id)
                    run.outcome = "refused (content filter)"
                    if self.settings.action == "error":
                        raise self.error("output", v)
                    ev = TokenEvent(
                        out.event.index,
                        -1,
                        self.settings.message,
                        finish_reason=CONTENT_FILTER,  # type: ignore[arg-type]
                    )
                    yield j, RequestOutput(out.request_id, ev)
                    continue
            for o in held[j]:
                yield j, o
            held[j].clear()


def completions_refused() -> APIError:
    return APIError(
        400,
        "/v1/completions is off while the safety filter (--guard) is on: raw prompts would "
        "bypass the conversation check",
        param="prompt",
        code=CONTENT_FILTER,
    )
