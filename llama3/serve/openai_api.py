"""The OpenAI routes: /v1/chat/completions, /v1/completions, /v1/models, and /tokenize, /detokenize.

A handler validates (pydantic, then cross-field rules), turns the body into prompt ids and one
`SamplingParams` per choice, submits a `Run`, and either streams server-sent events or collects
the choices into one response. A client that disconnects aborts its sequences (the stream is
cancelled, or a watcher notices the closed connection while a non-streamed answer is computed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import InvalidRequestError
from ..generation.params import SamplingParams
from ..tokenizer.chat_format import EOM, PYTHON_TAG
from ..tools.choice import ToolPlan
from ..tools.parse import parse_answer, restore_specials
from ..tools.prompt import encode_with_tools
from ..tools.stream import StreamParser
from .errors import APIError, error_body
from .metrics import Metrics
from .openai_format import CompletionLogprobs, Envelope, TokenText, chat_logprob, sse, usage
from .protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from .run import Run, check_room
from .state import ServerState

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _ctx(request: Request) -> tuple[ServerState, Metrics]:
    return request.app.state.server, request.app.state.metrics


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _dialog(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    # OpenAI's "developer" role is the system role under another name.
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        d["content"] = m.text() if m.content is not None or not m.tool_calls else None
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def _uses_tools(dialog: list[dict[str, Any]], plan: ToolPlan) -> bool:
    return bool(plan.offered) or any(m.get("tool_calls") or m["role"] == "tool" for m in dialog)


def _chat_prompt(state: ServerState, dialog: list[dict[str, Any]], plan: ToolPlan) -> list[int]:
    if _uses_tools(dialog, plan):
        return encode_with_tools(state.formatter, dialog, plan.offered)
    return state.formatter.encode_dialog_prompt(dialog)  # type: ignore[arg-type]


class ChatCall(NamedTuple):
    """One chat request in flight: what the response and stream builders share (they unpack it)."""

    run: Run
    body: ChatCompletionRequest
    env: Envelope
    state: ServerState
    dialog: list[dict[str, Any]]
    metrics: Metrics
    plan: ToolPlan

    def tool_text(self, ev: Any) -> str:
        """The event text with `<|python_tag|>` / `<|eom_id|>` restored, for the tool parser."""
        specials = self.state.tokenizer.special_tokens if self.state.tokenizer else {}
        return restore_specials(ev.text, ev.token, specials.get(PYTHON_TAG), specials.get(EOM))


async def _until_disconnect(request: Request, work: Awaitable[Response], run: Run) -> Response:
    """Compute a non-streamed answer, abandoning it if the client closes the connection."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        run.close("aborted (client went away)")
        return Response(status_code=499)
    finally:
        watch.cancel()
        task.cancel()


def _submit(
    request: Request,
    prefix: str,
    prompts: list[list[int]],
    params: list[SamplingParams],
    prompt_tokens: int,
    user: str | None,
    model: str | None = None,
) -> tuple[Run, Envelope]:
    """Queue one sequence per (prompt, params) as one run, with the adapter `model` names (the
    base for its own name or none); 429 when the queue is full."""
    state, metrics = _ctx(request)
    lora_id = state.check_model(model)
    name = model if lora_id else state.model_name
    rid = _new_id(prefix)
    run = Run(
        state.require_engine(),
        metrics,
        rid,
        prompts,
        params,
        prompt_tokens=prompt_tokens,
        max_queue=state.config.max_queue,
        timeout=state.config.request_timeout,
        user=user,
        lora_id=lora_id,
        model=name,
    )
    run.submit()
    return run, Envelope(rid, int(time.time()), name, state.fingerprint)


def _event_stream(
    run: Run, env: Envelope, obj: str, include_usage: bool, chunks: AsyncIterator[bytes]
) -> StreamingResponse:
    return StreamingResponse(
        _finish_stream(run, env, obj, include_usage, chunks),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


def _stop_ids(state: ServerState) -> set[int]:
    assert state.tokenizer is not None
    return set(state.tokenizer.stop_tokens)


# ---- chat ------------------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state, metrics = _ctx(request)
    engine = state.require_engine()
    state.check_model(body.model)
    body.check()
    assert state.tokenizer is not None
    dialog = _dialog(body.messages)
    plan = body.tool_plan
    prompt = _chat_prompt(state, dialog, plan)
    check_room(len(prompt), body.token_limit, engine.max_model_len)
    if state.guard is not None:  # the user's turn is judged before anything is queued
        env = Envelope(_new_id("chatcmpl"), int(time.time()), state.model_name, state.fingerprint)
        refusal = await state.guard.screen_input(
            dialog,
            metrics,
            env,
            n=body.n,
            stream=body.stream,
            include_usage=body.include_usage,
            prompt_tokens=len(prompt),
        )
        if refusal is not None:
            return refusal
    params = [
        body.sampling_params(
            max_tokens=body.token_limit,
            logprobs=body.num_logprobs,
            vocab_size=state.tokenizer.n_words,
            choice=j,
        )
        for j in range(body.n)
    ]
    run, env = _submit(
        request, "chatcmpl", [prompt] * body.n, params, len(prompt), body.user, body.model
    )
    call = ChatCall(run, body, env, state, dialog, metrics, plan)
    if body.stream:
        chunks = _chat_stream(call)
        return _event_stream(run, env, "chat.completion.chunk", body.include_usage, chunks)
    return await _until_disconnect(request, _chat_response(call), run)


async def _chat_response(call: ChatCall) -> Response:
    run, body, env, state, dialog, metrics, plan = call
    assert state.tokenizer is not None
    tt, stops = TokenText(state.tokenizer), _stop_ids(state)
    texts = [""] * body.n
    raw = [""] * body.n  # with the tool-call special tokens, for the parser
    finish: list[str | None] = [None] * body.n
    lps: list[list[dict[str, Any]]] = [[] for _ in range(body.n)]
    try:
        async for j, out in run.events():
            ev = out.event
            texts[j] += ev.text
            raw[j] += call.tool_text(ev)
            if _scored(ev, stops, body, body.logprobs):
                lps[j].append(chat_logprob(tt, ev.token, ev.logprob, ev.top_logprobs))
            if ev.finish_reason:
                finish[j] = ev.finish_reason
    finally:
        run.close()
    messages: list[dict[str, Any]] = []
    for j in range(body.n):
        msg: dict[str, Any] = {"role": "assistant", "content": texts[j]}
        if plan.parses and finish[j] == "stop":
            parsed = parse_answer(raw[j], plan.names, parallel=plan.parallel)
            if parsed.calls:
                msg = {
                    "role": "assistant",
                    "content": parsed.content,
                    "tool_calls": [c.openai() for c in parsed.calls],
                }
                finish[j] = "tool_calls"
        messages.append(msg)
    if state.guard is not None:  # an unsafe answer is replaced, its logprobs dropped with it
        for j in await state.guard.screen_answers(dialog, texts, metrics, run.id):
            messages[j] = {"role": "assistant", "content": state.guard.settings.message}
            finish[j], lps[j] = "content_filter", []
    choices = [
        {
            "index": j,
            "message": messages[j],
            "logprobs": {"content": lps[j]} if body.logprobs else None,
            "finish_reason": finish[j],
        }
        for j in range(body.n)
    ]
    return JSONResponse(
        env.wrap("chat.completion", choices, usage=usage(run.prompt_tokens, run.completion_tokens)),
        headers={"X-Request-Id": run.id},
    )


def _scored(ev: Any, stops: set[int], body: Any, wanted: bool) -> bool:
    """Whether the event's token gets a logprob entry: asked for, computed, and not the model's
    own stop token, which ends the answer but is not part of it."""
    is_stop = (
        ev.finish_reason == "stop" and not ev.text and ev.token in stops and not body.ignore_eos
    )
    return wanted and ev.logprob is not None and not is_stop


async def _finish_stream(
    run: Run, env: Envelope, obj: str, include_usage: bool, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The chunks, then a usage chunk when asked and `[DONE]`; an error after the headers went
    out (a timeout) becomes an error event. The run is closed however the stream ends."""
    try:
        async for c in chunks:
            yield c
        if include_usage:
            yield sse(env.wrap(obj, [], usage=usage(run.prompt_tokens, run.completion_tokens)))
        yield sse("[DONE]")
    except APIError as e:
        run.close(run.outcome if run.outcome != "ok" else f"error {e.status}")
        yield sse(error_body(e.status, e.message, e.param, e.code))
        yield sse("[DONE]")
    finally:
        run.close()


async def _chat_stream(call: ChatCall) -> AsyncIterator[bytes]:
    run, body, env, state, dialog, metrics, plan = call
    assert state.tokenizer is not None
    tt, stops = TokenText(state.tokenizer), _stop_ids(state)
    extra: dict[str, Any] = {"usage": None} if body.include_usage else {}

    def chunk(j: int, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> bytes:
        c = {"index": j, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return sse(env.wrap("chat.completion.chunk", [c], **extra))

    for j in range(body.n):
        yield chunk(j, {"role": "assistant", "content": ""})
    events = run.events()
    if state.guard is not None:  # text goes out only once the guard has judged it
        events = state.guard.filter_stream(run, dialog, events, metrics)
    parsers = [StreamParser(plan.names, plan.parallel) for _ in range(body.n)]
    async for j, out in events:
        ev = out.event
        lp = None
        if _scored(ev, stops, body, body.logprobs):
            lp = {"content": [chat_logprob(tt, ev.token, ev.logprob, ev.top_logprobs)]}
        if not plan.parses or ev.finish_reason == "content_filter":
            if ev.text or lp:
                yield chunk(j, {"content": ev.text}, lp)
            if ev.finish_reason:
                yield chunk(j, {}, None, ev.finish_reason)
            continue
        # tool calls: text that may be a call is held, deltas go out once it is known
        deltas = parsers[j].feed(call.tool_text(ev))
        finish = ev.finish_reason
        if finish:
            tail, is_call = parsers[j].finish()
            deltas += tail
            if is_call and finish == "stop":
                finish = "tool_calls"
        for k, d in enumerate(deltas):
            yield chunk(j, d, lp if k == 0 else None)
        if lp and not deltas:
            yield chunk(j, {"content": ""}, lp)
        if finish:
            yield chunk(j, {}, None, finish)


# ---- completions -----------------------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    state, _ = _ctx(request)
    engine = state.require_engine()
    state.check_model(body.model)
    body.check()
    if state.guard is not None:
        from ..guard.serving import completions_refused

        raise completions_refused()
    tok = state.tokenizer
    assert tok is not None
    prompts: list[list[int]] = []
    texts: list[str] = []
    for i, p in enumerate(body.prompts()):
        ids = tok.encode_prompt(p) if isinstance(p, str) else p
        if not ids:
            raise InvalidRequestError(
                f"prompt {i} is empty", "give at least one character or token", param="prompt"
            )
        if isinstance(p, list):
            bad = [t for t in p if not 0 <= t < tok.n_words]
            if bad:
                raise InvalidRequestError(
                    f"token id {bad[0]} in prompt {i} is outside the vocabulary "
                    f"(0..{tok.n_words - 1})",
                    "check the prompt token ids",
                    param="prompt",
                )
        check_room(len(ids), body.max_tokens, engine.max_model_len)
        prompts.append(ids)
        texts.append(p if isinstance(p, str) else tok.decode(p))
    all_prompts = [prompts[i] for i in range(len(prompts)) for _ in range(body.n)]
    params = [
        body.sampling_params(
            max_tokens=body.max_tokens,
            logprobs=body.logprobs,
            vocab_size=tok.n_words,
            choice=j,
            prompt_logprobs=body.echo and body.logprobs is not None,
        )
        for _ in prompts
        for j in range(body.n)
    ]
    n_prompt = sum(len(p) for p in prompts)
    run, env = _submit(request, "cmpl", all_prompts, params, n_prompt, body.user, body.model)
    echoes = [texts[c // body.n] if body.echo else "" for c in range(len(all_prompts))]
    if body.stream:
        chunks = _completion_stream(run, body, env, state, echoes)
        return _event_stream(run, env, "text_completion", body.include_usage, chunks)
    return await _until_disconnect(
        request, _completion_response(run, body, env, state, echoes), run
    )


async def _completion_response(
    run: Run, body: CompletionRequest, env: Envelope, state: ServerState, echoes: list[str]
) -> Response:
    assert state.tokenizer is not None
    tt, stops = TokenText(state.tokenizer), _stop_ids(state)
    n = len(echoes)
    texts = list(echoes)
    finish: list[str | None] = [None] * n
    lps = [CompletionLogprobs() for _ in range(n)]
    try:
        async for j, out in run.events():
            ev = out.event
            if out.prompt_logprobs is not None and body.logprobs is not None:
                _add_prompt_logprobs(lps[j], tt, run.prompts[j], out, body.logprobs > 0)
            if _scored(ev, stops, body, body.logprobs is not None):
                lps[j].add(
                    tt, ev.token, ev.logprob, ev.top_logprobs, len(texts[j]), body.logprobs > 0
                )
            texts[j] += ev.text
            if ev.finish_reason:
                finish[j] = ev.finish_reason
    finally:
        run.close()
    choices = [
        {
            "index": j,
            "text": texts[j],
            "logprobs": lps[j].as_dict() if body.logprobs is not None else None,
            "finish_reason": finish[j],
        }
        for j in range(n)
    ]
    return JSONResponse(
        env.wrap("text_completion", choices, usage=usage(run.prompt_tokens, run.completion_tokens)),
        headers={"X-Request-Id": run.id},
    )


def _add_prompt_logprobs(
    acc: CompletionLogprobs, tt: TokenText, prompt: list[int], out: Any, want_top: bool
) -> None:
    """The echoed prompt's entries: the first token has no logprob (nothing precedes it)."""
    tops = out.prompt_top_logprobs or [None] * len(prompt)
    offset = 0
    for tok, lp, top in zip(prompt, out.prompt_logprobs, tops):
        acc.add(tt, tok, lp, top, offset, want_top and lp is not None)
        offset += len(tt(tok)[0])


async def _completion_stream(
    run: Run, body: CompletionRequest, env: Envelope, state: ServerState, echoes: list[str]
) -> AsyncIterator[bytes]:
    assert state.tokenizer is not None
    tt, stops = TokenText(state.tokenizer), _stop_ids(state)
    extra: dict[str, Any] = {"usage": None} if body.include_usage else {}
    offsets = [len(e) for e in echoes]

    def chunk(j: int, text: str, lp: Any = None, finish: str | None = None) -> bytes:
        c = {"index": j, "text": text, "logprobs": lp, "finish_reason": finish}
        return sse(env.wrap("text_completion", [c], **extra))

    prompt_lps = body.echo and body.logprobs is not None
    for j, e in enumerate(echoes):
        if e and not prompt_lps:
            yield chunk(j, e)
    async for j, out in run.events():
        ev = out.event
        if out.prompt_logprobs is not None and body.logprobs is not None:
            # the echoed prompt goes out with its logprobs once they are known
            first = CompletionLogprobs()
            _add_prompt_logprobs(first, tt, run.prompts[j], out, body.logprobs > 0)
            yield chunk(j, echoes[j], first.as_dict())
        lp = None
        if _scored(ev, stops, body, body.logprobs is not None):
            one = CompletionLogprobs()
            one.add(tt, ev.token, ev.logprob, ev.top_logprobs, offsets[j], body.logprobs > 0)
            lp = one.as_dict()
        offsets[j] += len(ev.text)
        if ev.text or lp or ev.finish_reason:
            yield chunk(j, ev.text, lp, ev.finish_reason)


# ---- models, tokenize ------------------------------------------------------------------------------
def _model_card(state: ServerState) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "llama3",
    }
    if state.engine is not None:
        card["max_model_len"] = state.engine.max_model_len
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state, _ = _ctx(request)
    limit = state.engine.max_model_len if state.engine is not None else None
    adapters = [state.adapters.card(a, limit) for a in state.adapters.by_name.values()]
    return {"object": "list", "data": [_model_card(state), *adapters]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    state, _ = _ctx(request)
    if state.check_model(model_id):
        limit = state.engine.max_model_len if state.engine is not None else None
        return state.adapters.card(state.adapters.by_name[model_id], limit)
    return _model_card(state)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state, _ = _ctx(request)
    engine = state.require_engine()
    state.check_model(body.model)
    tok = state.tokenizer
    assert tok is not None
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        ids = _chat_prompt(state, _dialog(body.messages), ToolPlan())
    elif body.add_special_tokens:
        ids = tok.encode_prompt(body.prompt or "")
    else:
        ids = tok.encode(body.prompt or "", bos=False, eos=False)
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    state, _ = _ctx(request)
    state.require_engine()
    state.check_model(body.model)
    tok = state.tokenizer
    assert tok is not None
    bad = [t for t in body.tokens if not 0 <= t < tok.n_words]
    if bad:
        raise APIError(
            400,
            f"token id {bad[0]} is outside the vocabulary (0..{tok.n_words - 1})",
            param="tokens",
        )
    return {"prompt": tok.decode(body.tokens)}
