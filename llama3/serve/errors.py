"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, never a traceback.

`APIError` is what handlers raise; `install_handlers` maps it, the engine's typed errors, pydantic
validation errors, malformed JSON, and anything unexpected (unknown routes and bodies too large are mapped in `app`) to that one shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import ContextLengthExceeded, InvalidRequestError, Llama3Error

log = logging.getLogger("llama3.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


#: pydantic's names for union members, which show up in error locations
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def from_llama3_error(e: Llama3Error) -> APIError:
    """The engine's typed errors carry their own status; the hint goes into the message."""
    message = f"{e.message} ({e.hint})" if e.hint else e.message
    if isinstance(e, ContextLengthExceeded):
        return APIError(400, message, param=e.param, code="context_length_exceeded")
    if isinstance(e, InvalidRequestError):
        return APIError(400, message, param=e.param, code="invalid_value")
    return APIError(e.http_status, message)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    # pydantic reports a union failure once per member; name the field, not the member.
    loc = [x for x in loc if "[" not in x and x not in _TYPE_TAGS and not x.startswith("function-")]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON", None
    if kind == "extra_forbidden":
        return f"unrecognized request field {param!r}: this server does not support it", param
    if kind == "missing":
        return f"{param} is required", param
    msg = first.get("msg", "invalid value")
    return (f"{param}: {msg}" if param else msg), param


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(Llama3Error)
    async def _llama3_error(_: Request, e: Llama3Error) -> JSONResponse:
        err = from_llama3_error(e)
        if err.status >= 500:
            log.error("request failed: %s", e)
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(e)
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal server error ({type(e).__name__})")
