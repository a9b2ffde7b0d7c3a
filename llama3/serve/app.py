"""The ASGI app: routes, error handlers, middleware and the model-loading lifespan.

`create_app(config)` returns a FastAPI app that starts answering at once: `/health` is 503 while
the model loads on a background thread, 200 after. Middleware order, outermost first: request
counting, CORS (answers preflights itself), API keys, body limit, then the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..registry import resolve_model
from . import metrics as metrics_mod
from .adapters import router as adapters_router
from .errors import error_response, install_handlers
from .middleware import APIKeyMiddleware, BodyLimitMiddleware, BodyTooLarge, RequestCounter
from .openai_api import router
from .state import ServerConfig, ServerState

log = logging.getLogger("llama3.serve")

PUBLIC_ROUTES = ("/health", "/")
ROUTES = (
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/tokenize",
    "/detokenize",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
)


def create_app(
    config: ServerConfig,
    *,
    model_path: Path | None = None,
    on_load_error: Callable[[Exception], None] | None = None,
) -> FastAPI:
    path = model_path or resolve_model(config.model)
    state = ServerState(config, path)
    metrics = metrics_mod.Metrics(state.stats)

    def load_failed(e: Exception) -> None:
        log.error("error: could not load %s: %s", path, e)
        if on_load_error is not None:
            on_load_error(e)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start_loading(asyncio.get_running_loop(), load_failed)
        try:
            yield
        finally:
            # uvicorn has drained the connections by now: let the engine finish and stop.
            await asyncio.get_running_loop().run_in_executor(None, state.stop)

    app = FastAPI(title="llama3", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server, app.state.metrics = state, metrics
    install_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, __: BodyTooLarge) -> JSONResponse:
        return _body_too_large(config)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns an exception while reading the body into a 400; ours means "too large".
        if isinstance(e.__cause__, BodyTooLarge):
            return _body_too_large(config)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif e.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    app.include_router(router)
    app.include_router(adapters_router)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error is not None:
            return JSONResponse({"status": "error", "error": str(state.load_error)}, 503)
        if state.engine is None:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=metrics_mod.CONTENT_TYPE)

    page = resources.files("llama3.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)
    app.add_middleware(APIKeyMiddleware, keys=config.api_keys, public=PUBLIC_ROUTES)
    if config.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(
        RequestCounter,
        count=lambda route, status: metrics.requests.labels(route, str(status)).inc(),
        routes=ROUTES,
    )
    return app


def _body_too_large(config: ServerConfig) -> JSONResponse:
    return error_response(
        413,
        f"the request body is larger than {config.max_body_bytes} bytes",
        code="body_too_large",
    )
