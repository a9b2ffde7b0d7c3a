"""Pure ASGI middleware: API keys, the body-size limit, and request counting by route and status.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses pass through untouched and a
client disconnect still reaches the handler.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(
    send: Send, status: int, message: str, code: str | None = None, headers: Iterable = ()
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """Require `Authorization: Bearer <key>` on every route but the public ones."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], public: Iterable[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope["path"] in self.public
            or scope["method"] == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        # compare against every key, always, so timing does not tell which prefix matched
        ok = scheme.lower() == b"bearer" and any([hmac.compare_digest(token, k) for k in self.keys])
        if not ok:
            message = (
                "missing API key: send the header 'Authorization: Bearer <key>'"
                if not auth
                else "invalid API key"
            )
            await send_error(
                send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")]
            )
            return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over `limit` bytes: by Content-Length before reading, by counting otherwise."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await send_error(send, 413, self._message(), "body_too_large")
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return msg

        async def tracked(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, self._message(), "body_too_large")

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


class RequestCounter:
    """Count responses by route and status for /metrics (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, count: Callable[[str, int], None], routes: Iterable[str]):
        self.app, self.count, self.routes = app, count, frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counting(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.count(route, msg["status"])
            await send(msg)

        await self.app(scope, receive, counting)
