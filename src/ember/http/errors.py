"""The one table from error kinds to HTTP statuses, and the two error body shapes.

TEI routes answer `{"error": ..., "error_type": ...}`; `/v1/*` routes answer OpenAI's error
object. Unknown exceptions are logged and answered with a 500 that leaks nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ember import metrics
from ember.errors import EmberError, ErrorKind
from ember.http import schemas
from ember.http.table import openai_shaped

log = logging.getLogger("ember.http")

STATUS: dict[ErrorKind, int] = {
    ErrorKind.VALIDATION: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.NOT_READY: 503,
    ErrorKind.WRONG_TASK: 424,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.BACKEND: 500,
    ErrorKind.MODEL: 500,
}

# OpenAI's `type` for each kind, as its clients expect.
_OPENAI_TYPE: dict[ErrorKind, str] = {
    ErrorKind.VALIDATION: "invalid_request_error",
    ErrorKind.TOO_LARGE: "invalid_request_error",
    ErrorKind.OVERLOADED: "rate_limit_error",
    ErrorKind.NOT_READY: "server_error",
    ErrorKind.WRONG_TASK: "invalid_request_error",
    ErrorKind.UNAUTHORIZED: "authentication_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.BACKEND: "server_error",
    ErrorKind.MODEL: "server_error",
}

# Every status the table can answer, documented per API family so clients and fuzzers see the
# real contract.
_DOCUMENTED = (401, 404, 413, 422, 424, 429, 500, 503)
TEI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody} for code in _DOCUMENTED
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.OpenAIError} for code in _DOCUMENTED
}


def error_response(
    path: str, kind: ErrorKind | str, message: str, *, retry_after: float | None = None
) -> Response:
    """The error body for `path` (OpenAI's shape on its routes), with its status and headers."""
    kind = ErrorKind(kind) if not isinstance(kind, ErrorKind) else kind
    status = STATUS[kind]
    body: dict[str, Any]
    if openai_shaped(path):
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPE[kind],
                "param": None,
                "code": kind.value,
            }
        }
    else:
        body = {"error": message, "error_type": kind.value}
    headers: dict[str, str] = {}
    if retry_after is not None or kind in (ErrorKind.OVERLOADED, ErrorKind.NOT_READY):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    if kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    metrics.FAILURES.labels(kind=kind.value).inc()
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def internal_error(path: str) -> Response:
    body: dict[str, Any]
    message = "internal error; the server logged the details"
    if openai_shaped(path):
        body = {
            "error": {"message": message, "type": "server_error", "param": None, "code": "internal"}
        }
    else:
        body = {"error": message, "error_type": "internal"}
    metrics.FAILURES.labels(kind="internal").inc()
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        msg = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            return "the body is not valid JSON"
        if error.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Route every exception through the table."""

    async def on_ember(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmberError)
        return error_response(request.url.path, exc.kind, exc.message, retry_after=exc.retry_after)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(request.url.path, ErrorKind.VALIDATION, _describe_validation(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # FastAPI's body reader: undecodable or too deeply nested JSON.
            return error_response(
                request.url.path, ErrorKind.VALIDATION, "the body could not be parsed as JSON"
            )
        kind = {
            404: ErrorKind.NOT_FOUND,
            413: ErrorKind.TOO_LARGE,
            401: ErrorKind.UNAUTHORIZED,
        }.get(exc.status_code)
        if kind is not None:
            return error_response(request.url.path, kind, str(exc.detail))
        body = {"error": str(exc.detail), "error_type": "http"}
        return Response(
            orjson.dumps(body),
            status_code=exc.status_code,
            media_type="application/json",
            headers=dict(exc.headers or {}),
        )

    async def on_unknown(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return internal_error(request.url.path)

    app.add_exception_handler(EmberError, on_ember)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unknown)
