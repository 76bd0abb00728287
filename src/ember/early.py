"""Probes from the first moment: `python -m ember serve` binds its port before importing anything
heavy and answers `/health` 200 and `/ready` 503 (with the stage) from a stdlib thread, while
pydantic, FastAPI, uvicorn and the backend stack import (0.6 s and more; seconds on a loaded
machine). uvicorn then takes over the same listening socket: connections waiting in its backlog
are served by the full app, none is refused.

With several workers (`ember.workers`) the socket joins their SO_REUSEPORT group and the first
worker inherits it, answering on it from its own first moment. Where the process itself will run
on CUDA, the CUDA context is created on a thread meanwhile (`warm_cuda`).

This module reads `--host`/`--port`/`--workers`/`--device` (and their `EMBER_*` variables)
itself, the one exception to
"Settings is the only place config is read": importing Settings costs what this module exists
to avoid. `ember.server` checks that Settings agrees before it uses the socket.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ember.gpus import cuda_likely

_MAX_HEAD = 8192
_listening: list[EarlyProbes] = []  # the one listener of this process, while it answers


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _address(argv: Sequence[str]) -> tuple[str, int, bool] | None:
    """(host, port, shared) for `ember serve ARGV`, or None where the early listener must not
    run: another command, help, auto-reload, or a value only Settings can judge. `shared`:
    several workers may serve the port (`--workers N`, or `auto` on a CUDA host), so the socket
    joins them with SO_REUSEPORT and goes to the first worker (ember.workers)."""
    if argv and argv[0] != "serve":
        return None
    rest = argv[1:]
    if any(a in ("-h", "--help", "--reload") for a in rest) or os.environ.get(
        "EMBER_RELOAD", ""
    ).lower() in ("1", "true", "yes", "on"):
        return None
    workers = _option(rest, "--workers") or os.environ.get("EMBER_WORKERS", "auto")
    host = _option(rest, "--host") or os.environ.get("EMBER_HOST", "0.0.0.0")
    port = _option(rest, "--port") or os.environ.get("EMBER_PORT", "8080")
    try:
        shared = cuda_likely(_device(rest)) if workers == "auto" else int(workers) != 1
        return host, int(port), shared
    except ValueError:
        return None


def _device(rest: Sequence[str]) -> str:
    return _option(rest, "--device") or os.environ.get("EMBER_DEVICE", "auto")


def listen_from_argv(argv: Sequence[str]) -> None:
    """Bind and start answering probes if `argv` is an `ember serve` that can use it; in a
    single process bound for CUDA, also start creating the CUDA context (`warm_cuda`)."""
    address = _address(argv)
    if address is None:
        return
    host, port, shared = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()  # the normal path reports it (address in use, bad host) as it always has
        return
    answer_on(sock, host=host, port=port)
    if not shared:
        warm_cuda(_device(argv[1:]))


def answer_on(sock: socket.socket, *, host: str, port: int) -> None:
    """Answer probes on a listening socket until `take` hands it over."""
    listener = EarlyProbes(sock, host=host, port=port)
    listener.start()
    _listening.append(listener)


def warm_cuda(device: str) -> None:
    """Where this process will run on CUDA, create the device's primary context now, on a
    thread, through the driver API (ctypes; the call releases the GIL): CuPy and torch use that
    same context later and find it made. It costs 0.2-0.35 s on the H200 and otherwise runs
    after the imports, on the loading path; here it overlaps them."""
    if not cuda_likely(device):
        return

    def create() -> None:
        try:
            cuda = ctypes.CDLL("libcuda.so.1")
            handle, context = ctypes.c_int(), ctypes.c_void_p()
            if cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(handle), 0) == 0:
                cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle)
        except OSError:
            pass  # no driver library: the backend reports what is missing

    threading.Thread(target=create, name="ember-cuda-init", daemon=True).start()


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
