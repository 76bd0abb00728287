"""Probes from the first moment: `python -m ember serve` binds its port before importing anything
heavy and answers `/health` 200 and `/ready` 503 (with the stage) from a stdlib thread, while
pydantic, FastAPI, uvicorn and the backend stack import (0.6 s and more; seconds on a loaded
machine). uvicorn then takes over the same listening socket: connections waiting in its backlog
are served by the full app, none is refused.

This module reads `--host`/`--port` (and `EMBER_HOST`/`EMBER_PORT`) itself, the one exception to
"Settings is the only place config is read": importing Settings costs what this module exists
to avoid. `ember.server` checks that Settings agrees before it uses the socket.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

_MAX_HEAD = 8192
_listening: list[EarlyProbes] = []  # the one listener of this process, while it answers


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _address(argv: Sequence[str]) -> tuple[str, int] | None:
    """(host, port) for `ember serve ARGV`, or None where the early listener must not run:
    another command, help, auto-reload, several workers (each binds its own socket), or a
    value only Settings can judge."""
    if argv and argv[0] != "serve":
        return None
    rest = argv[1:]
    if any(a in ("-h", "--help", "--reload") for a in rest) or os.environ.get(
        "EMBER_RELOAD", ""
    ).lower() in ("1", "true", "yes", "on"):
        return None
    workers = _option(rest, "--workers") or os.environ.get("EMBER_WORKERS", "1")
    host = _option(rest, "--host") or os.environ.get("EMBER_HOST", "0.0.0.0")
    port = _option(rest, "--port") or os.environ.get("EMBER_PORT", "8080")
    try:
        if int(workers) != 1:
            return None
        return host, int(port)
    except ValueError:
        return None


def listen_from_argv(argv: Sequence[str]) -> None:
    """Bind and start answering probes if `argv` is an `ember serve` that can use it."""
    address = _address(argv)
    if address is None:
        return
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()  # the normal path reports it (address in use, bad host) as it always has
        return
    listener = EarlyProbes(sock, host=host, port=port)
    listener.start()
    _listening.append(listener)


def take(*, host: str, port: int) -> socket.socket | None:
    """Stop answering and hand over the listening socket, if it matches (host, port)."""
    if not _listening:
        return None
    listener = _listening.pop()
    sock = listener.stop()
    if (listener.host, listener.port) != (host, port):
        sock.close()
        return None
    return sock


def describe_with(snapshot: Callable[[], dict[str, Any]]) -> None:
    """From now on `/ready` and `/health` report this snapshot's stage (an Engines')."""
    for listener in _listening:
        listener.snapshot = snapshot


class EarlyProbes:
    """A selector loop on one thread: `/health` 200, `/ready` 503 with the stage, anything
    else 503 with Retry-After; every answer closes its connection."""

    def __init__(self, sock: socket.socket, *, host: str, port: int) -> None:
        self.sock = sock
        self.host = host
        self.port = port
        self.snapshot: Callable[[], dict[str, Any]] = lambda: {"status": "starting"}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="ember-early-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> socket.socket:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join()
        self._wake_r.close()
        self._wake_w.close()
        return self.sock

    def _run(self) -> None:
        self.sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        heads: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.sock:
                    self._accept(selector, heads)
                elif key.fileobj is not self._wake_r:
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    self._read(selector, heads, conn)
        selector.close()
        # Connections accepted but not yet answered at hand-over: answer them here (closing
        # them unread would reset them); what is still in the backlog is uvicorn's.
        for conn, start in heads.items():
            conn.settimeout(0.5)
            head = start
            try:
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    data = conn.recv(4096)
                    if not data:
                        break
                    head += data
                conn.sendall(self._answer(head))
            except OSError:
                pass
            conn.close()

    def _accept(self, selector: selectors.BaseSelector, heads: dict[socket.socket, bytes]) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            heads[conn] = b""
            selector.register(conn, selectors.EVENT_READ)

    def _read(
        self,
        selector: selectors.BaseSelector,
        heads: dict[socket.socket, bytes],
        conn: socket.socket,
    ) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        head = heads[conn] + data
        if data and b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
            heads[conn] = head
            return
        del heads[conn]
        selector.unregister(conn)
        if data:
            try:
                conn.setblocking(True)
                conn.settimeout(1.0)
                conn.sendall(self._answer(head))
            except OSError:
                pass
        conn.close()

    def _answer(self, head: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0].split()
        method, path = (line[0], line[1].split(b"?")[0]) if len(line) >= 2 else (b"", b"")
        try:
            snapshot = self.snapshot()
        except Exception:  # a stage read must never take the probe down
            snapshot = {"status": "starting"}
        stage = snapshot.get("status", "starting")
        if path == b"/health" and method in (b"GET", b"HEAD"):
            status, body = 200, {"status": "alive", "stage": stage}
        elif path == b"/ready" and method in (b"GET", b"HEAD"):
            status, body = 503, snapshot
        else:
            status, body = 503, {"error": f"the server is {stage}", "error_type": "not_ready"}
        payload = json.dumps(body).encode()
        reason = b"OK" if status == 200 else b"Service Unavailable"
        headers = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n" % (status, reason, len(payload))
        )
        if status == 503:
            headers += b"retry-after: 1\r\n"
        return headers + b"\r\n" + (b"" if method == b"HEAD" else payload)
