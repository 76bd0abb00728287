"""uvicorn with ember's shutdown contract and HTTP limits.

Shutdown (DESIGN.md "Shutdown"): on the first SIGTERM, SIGINT or SIGHUP the stage becomes
`draining`: `/ready` answers 503 at once, new inference requests get a JSON 503 with
Retry-After, and in-flight and queued requests finish until `shutdown_timeout`. Then every
request still unfinished is cancelled and answered with a JSON 503 (never uvicorn's text/plain
500, never a reset), and uvicorn closes what is left within a fixed short backstop, so the
process exits within the timeout + 1 s whatever clients do. A second signal skips the wait.

Limits: the request line and headers are bounded in bytes and in count (431 before auth and
before the body is read) and must arrive within `http_header_timeout`; each read of a body must
make progress within `http_body_timeout` (408). A slow client then holds no task and no shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ember.errors import ErrorKind
from ember.http.app import app_state
from ember.http.errors import error_response
from ember.settings import Settings

log = logging.getLogger("ember.server")

# After draining starts, keep answering (503 on /ready) at least this long, so load balancers
# see not-ready before the port closes.
_MIN_DRAIN_SECONDS = 0.5
# What uvicorn may still spend closing connections once every request was answered or
# cancelled; with the cancel-and-answer step before it, it is normally a few milliseconds.
_CLOSE_BACKSTOP_SECONDS = 0.4
# How long cancelled requests get to send their 503 before uvicorn closes the connections.
_ANSWER_SECONDS = 0.2
# How long a refused connection's further bytes are read and dropped before it is closed.
_LINGER_SECONDS = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PROBES = frozenset({"/health", "/ready"})


class _BodyTimeout(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body reader passes it on as is."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"no request body data for {seconds:g} s", headers={"Connection": "close"}
        )


class Guard:
    """The outermost ASGI layer: tracks every HTTP request from its headers to its last byte,
    bounds the header count and the wait for body data, answers `HEAD` on the probes, and on
    `finish_now()` cancels every unfinished request, which then answers a JSON 503."""

    def __init__(self, app: ASGIApp, *, max_headers: int, body_timeout: float) -> None:
        self.app = app
        self.max_headers = max_headers
        self.body_timeout = body_timeout
        self.tasks: set[asyncio.Task[Any]] = set()
        self.finishing = False
        self.idle = asyncio.Event()

    @property
    def active(self) -> int:
        return len(self.tasks)

    def finish_now(self) -> int:
        """Cancel every unfinished request; each answers 503 unless its response had started."""
        self.finishing = True
        for task in list(self.tasks):
            task.cancel("ember shutdown")
        return len(self.tasks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            await _refuse_headers(scope, receive, send, f"more than {self.max_headers} headers")
            return
        head = scope["method"] == "HEAD" and scope["path"] in _PROBES
        if head:  # a probe's answer without its body (RFC 9110: HEAD is GET without content)
            scope = {**scope, "method": "GET"}
        task = asyncio.current_task()
        assert task is not None
        if self.finishing:
            await _shutting_down(scope, receive, send)
            return
        self.tasks.add(task)
        self.idle.clear()
        started = False
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except asyncio.CancelledError:
            if not self.finishing:
                raise
            task.uncancel()
            if not started:
                await _shutting_down(scope, receive, send)
        finally:
            self.tasks.discard(task)
            if not self.tasks:
                self.idle.set()


async def _shutting_down(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        scope["path"], ErrorKind.NOT_READY, "the server is shutting down", retry_after=1
    )
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


async def _refuse_headers(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    body = orjson.dumps({"error": f"request headers too large: {why}", "error_type": "too_large"})
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _HeadersTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded in bytes, in header count and
    in time (httptools itself buffers a header of any size). Refusals are raw 431/408 answers
    sent before any ASGI code runs, so they come before auth and before the body."""

    max_head_bytes = 16 * 1024
    max_headers = 100
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._raw_bytes = 0  # bytes of chunks that arrived while the head was incomplete
        self._head_bytes = 0  # bytes of the request line and headers parsed so far
        self._head_count = 0
        self._began_here = False
        self._refusal: str | None = None
        self._discarding = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Idle between requests is uvicorn's keep-alive timeout's business until the next
        # request's first byte; this ends a slow head (not one queued behind a pipelined answer).
        idle = self.cycle is None or self.cycle.response_complete
        if self._in_head and idle and not self.transport.is_closing():
            self._answer_raw(408, "request headers not received in time")

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._began_here = False
        super().data_received(data)
        if self._in_head and not self._began_here and not self.transport.is_closing():
            # Bytes of a head still incomplete: httptools holds them until a header ends.
            self._raw_bytes += len(data)
            if self._raw_bytes > self.max_head_bytes:
                self._answer_raw(431, f"more than {self.max_head_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._answer_raw(431, self._refusal)
        elif self.cycle is not None and not self.cycle.response_complete:
            # Junk after a valid request in the same packet: uvicorn would write its 400 and
            # close at once, dropping the valid request's answer. Answer that, then close.
            self.cycle.keep_alive = False
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._began_here = True
        self._raw_bytes = 0
        self._head_bytes = 0
        self._head_count = 0
        self._refusal = None
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), header=False)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, header=True)
        super().on_header(name, value)

    def _count(self, size: int, *, header: bool) -> None:
        self._head_bytes += size
        self._head_count += header
        if self._head_bytes > self.max_head_bytes:
            self._refusal = f"more than {self.max_head_bytes} bytes"
        elif self._head_count > self.max_headers:
            self._refusal = f"more than {self.max_headers} headers"
        else:
            return
        # httptools turns this into an HttpParserError, which lands in send_400_response.
        raise _HeadersTooLarge(self._refusal)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_bytes = self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def _answer_raw(self, status: int, why: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        kind = "timeout" if status == 408 else "too_large"
        body = orjson.dumps({"error": f"request headers refused: {why}", "error_type": kind})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body)) + body
        )
        self._in_head = False
        # Lingering close (as nginx's): closing with the client's bytes unread makes the kernel
        # send a reset, which can destroy the answer before the client reads it. So stop
        # writing, discard what still arrives for a moment, then close.
        self._discarding = True
        self._disarm_head_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with this server's limits."""
    return type(
        "EmberHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.http_max_header_bytes,
            "max_headers": settings.http_max_headers,
            "head_timeout": settings.http_header_timeout,
        },
    )


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose signals run ember's drain (module docstring) instead of uvicorn's
    graceful wait, which would add the timeout a second time and answer 500 at its end."""

    def __init__(
        self, config: uvicorn.Config, *, settings: Settings, app: FastAPI, guard: Guard
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.app = app
        self.guard = guard
        self._drain_task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version handles SIGINT/SIGTERM only (SIGHUP would kill the process at
        # once) and re-raises the signal after shutdown, which turns a clean drain into exit 143.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self._loop is None:  # not serving yet: nothing in flight to finish
            self.should_exit = True
            return
        if self._drain_task is None:
            log.info("%s: draining (up to %.1f s)", name, self.settings.shutdown_timeout)
            self._drain_task = self._loop.create_task(self._drain())
        elif not self._now.is_set():
            log.info("%s again: finishing now", name)
            self._now.set()
        else:
            self.force_exit = True

    async def _drain(self) -> None:
        state = app_state(self.app)
        state.engines.drain()
        log.info("draining: %d requests in flight", self.guard.active)
        started = time.monotonic()
        timeout = self.settings.shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_MIN_DRAIN_SECONDS, timeout)):
                await self._now.wait()
        remaining = started + timeout - time.monotonic()
        if self.guard.active and remaining > 0 and not self._now.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await _first(self.guard.idle.wait(), self._now.wait())
        cancelled = self.guard.finish_now()
        if cancelled:
            log.warning("shutdown: answering 503 to %d unfinished requests", cancelled)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ANSWER_SECONDS):
                    await self.guard.idle.wait()
        log.info("drained in %.2f s; exiting", time.monotonic() - started)
        self.should_exit = True


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def server(app: FastAPI, settings: Settings, *, outer: ASGIApp | None = None) -> DrainingServer:
    """The uvicorn server for `app` (`outer`: a wrapper around it to serve instead)."""
    guard = Guard(
        outer or app,
        max_headers=settings.http_max_headers,
        body_timeout=settings.http_body_timeout,
    )
    config = uvicorn.Config(
        guard,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=bounded_protocol(settings),
        ws="none",
        server_header=False,
    )
    # Requests are answered or cancelled before uvicorn's own shutdown: it only closes sockets.
    config.timeout_graceful_shutdown = _CLOSE_BACKSTOP_SECONDS  # type: ignore[assignment]
    return DrainingServer(config, settings=settings, app=app, guard=guard)


def run(app: FastAPI, settings: Settings, *, sockets: list[socket.socket] | None = None) -> None:
    """Serve `app` until a signal; on `sockets` (already listening) if given."""
    server(app, settings).run(sockets=sockets)


def run_reload(settings: Settings) -> None:
    uvicorn.run(
        "ember.http.app:app_from_env",
        factory=True,
        reload=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
    )
