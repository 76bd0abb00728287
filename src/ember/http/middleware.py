"""One pure-ASGI middleware: API key, body size limit, in-flight count and request metrics.

Pure ASGI (not BaseHTTPMiddleware) so it adds microseconds, can refuse an oversized body from
its Content-Length before reading it, and can stop reading a chunked one at the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember import metrics
from ember.errors import ErrorKind
from ember.http import table
from ember.http.errors import error_response, internal_error

log = logging.getLogger("ember.http")


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body reader re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than the payload limit of {limit} bytes")


@dataclass
class InFlight:
    """Requests between arrival and their last byte sent: drain waits for zero."""

    count: int = 0


class EmberMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        metrics_public: bool,
        payload_limit: int,
        in_flight: InFlight,
    ) -> None:
        self.app = app
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self._open = table.open_routes(metrics_public=metrics_public)
        self._limit = payload_limit
        self._in_flight = in_flight
        # Inference routes: counted by route and task, cancelled when their client leaves.
        self._tasks = table.route_tasks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            self._key is not None
            and (scope["method"], path) not in self._open
            and not self._authorized(scope)
        ):
            await error_response(
                path,
                ErrorKind.UNAUTHORIZED,
                "a valid API key is required: Authorization: Bearer KEY",
            )(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self._limit:
                    await self._too_large(scope, receive, send)
                    return
                break
        task = self._tasks.get(path)
        track = task is not None
        status = 500
        started = False
        received = 0
        body_read = asyncio.Event()

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    raise _BodyTooLarge(self._limit)
                if not message.get("more_body", False):
                    body_read.set()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        self._in_flight.count += 1
        handler = asyncio.ensure_future(self.app(scope, limited_receive, send_wrapper))
        # uvicorn does not cancel a handler whose client left; for inference routes, watch for
        # the disconnect once the body is read and cancel, so queued work is dropped.
        watcher = (
            asyncio.ensure_future(self._cancel_on_disconnect(body_read, receive, handler))
            if track
            else None
        )
        try:
            await handler
        except _BodyTooLarge:
            status = 413
            if not started:
                await self._too_large(scope, receive, send)
        except Exception:
            # Answered here rather than by an app-level handler: Starlette's outermost error
            # middleware re-raises after answering, and uvicorn then drops the keep-alive
            # connection; here the client gets its JSON 500 and keeps the connection.
            if started:
                raise
            log.exception("unhandled error on %s", path)
            status = 500
            await internal_error(path)(scope, receive, send)
        except asyncio.CancelledError:
            if watcher is None or not watcher.done() or watcher.cancelled():
                raise  # cancelled from outside (server shutdown), not by the client leaving
            status = 499  # nginx's "client closed request"
        finally:
            if watcher is not None:
                watcher.cancel()
            self._in_flight.count -= 1
            if task is not None:
                metrics.REQUESTS.labels(route=path, task=task, status=str(status)).inc()

    @staticmethod
    async def _cancel_on_disconnect(
        body_read: asyncio.Event, receive: Receive, handler: asyncio.Future[None]
    ) -> None:
        await body_read.wait()
        while not handler.done():
            message = await receive()
            if message["type"] == "http.disconnect":
                if not handler.done():
                    handler.cancel()
                return

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._key)
        return False

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            scope["path"],
            ErrorKind.TOO_LARGE,
            f"the body is larger than the payload limit of {self._limit} bytes",
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
