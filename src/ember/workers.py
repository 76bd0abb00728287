"""`ember serve --workers N`: N replicas of the whole server on one port, ready together.

Why replicas: on a GPU one ember process is bound by Python (HTTP parsing, validation,
tokenisation, JSON), not by the device: measured on an H100 (docs/gpu.md), one process serves
about 1,500 single-text requests/s at concurrency 32 with the GPU mostly idle, and a process with
a backend that costs nothing serves only about 2,000. Replicas scale with CPU cores; each holds
its own model copy, CUDA context and graphs (about 1.5 GB of GPU memory for all-MiniLM-L6-v2).
Several HTTP processes feeding one GPU process would save that memory but add a copy and two
process hops per batch; at these model sizes memory is cheap and the hops are not.

How: the supervisor (this process) starts N `python -m ember.workers` children and hands each
its settings on stdin (the API key never goes on a command line). Every child binds the port
with SO_REUSEPORT, so the kernel spreads connections over them, and publishes its stage in a
small shared file; a child answers `/ready` 200 only when every child is ready, so a load
balancer never sees "ready" while a sibling still warms. SIGTERM/SIGINT are passed on (each
child drains); if a child dies, the others are stopped and the supervisor exits with its code.
Prometheus scrapes reach one child at a time: each serves its own /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ember.settings import Settings

log = logging.getLogger("ember.workers")

_CODES = {"starting": 1, "loading": 2, "warming": 3, "ready": 4, "failed": 5, "draining": 6}
_READY = _CODES["ready"]
_BACKLOG = 2048


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _settings_payload(settings: Settings, *, port: int) -> bytes:
    data = settings.model_dump(mode="json")
    data["api_key"] = settings.api_key.get_secret_value() if settings.api_key else None
    data.update(workers=1, port=port, reload=False)
    return orjson.dumps(data)


# --- supervisor -------------------------------------------------------------------------------


def supervise(settings: Settings) -> int:
    """Run `settings.workers` replicas until they exit or a signal stops them."""
    n = settings.workers
    # Port 0: pick one free port for all. The reserving socket never listens, so the kernel
    # sends it no connections; it only keeps the port ours until the children have bound it.
    reserve = reuseport_socket(settings.host, settings.port)
    port = reserve.getsockname()[1]
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix="ember-workers-", dir=folder)
    os.write(fd, bytes(n))
    os.close(fd)
    state = Path(name)
    started = time.monotonic()
    payload = _settings_payload(settings, port=port)
    children: list[subprocess.Popen[bytes]] = []
    for index in range(n):
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which passes
        # it on once (a second signal would make a child skip draining).
        child = subprocess.Popen(
            [sys.executable, "-m", "ember.workers", str(index), str(n), str(state)],
            stdin=subprocess.PIPE,
            process_group=0,
        )
        assert child.stdin is not None
        child.stdin.write(payload)
        child.stdin.close()
        children.append(child)
    log.info("started %d workers on port %d (pids %s)", n, port, [c.pid for c in children])

    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    announced = False
    code = 0
    try:
        while any(c.poll() is None for c in children):
            if not announced and state.read_bytes() == bytes([_READY]) * n:
                announced = True
                log.info("all %d workers ready in %.2f s", n, time.monotonic() - started)
            dead = [c for c in children if c.poll() not in (None, 0)]
            if dead and not stopping.is_set():
                code = dead[0].returncode
                log.error("worker pid %d exited with %d; stopping the others", dead[0].pid, code)
                forward(signal.SIGTERM, None)
            time.sleep(0.05)
    finally:
        reserve.close()
        state.unlink(missing_ok=True)
    return code or max((c.returncode or 0) for c in children)


# --- one worker ------------------------------------------------------------------------------


class ReadyGate:
    """ASGI wrapper: publishes this worker's stage and holds `/ready` at 503 until every
    worker is ready (the app's own `/ready` answers when they are)."""

    def __init__(self, app: Any, *, engines: Any, index: int, workers: int, state: Path) -> None:
        self.app = app
        self.engines = engines
        self.index = index
        self.workers = workers
        self._fd = os.open(state, os.O_RDWR)
        threading.Thread(target=self._publish, name="ember-ready-gate", daemon=True).start()

    def _publish(self) -> None:
        last = -1
        while True:
            code = _CODES.get(self.engines.stage.value, 0)
            if code != last:
                os.pwrite(self._fd, bytes([code]), self.index)
                last = code
            # Fast while starting up (readiness is announced within 5 ms), slow once ready.
            time.sleep(0.005 if code < _READY else 0.1)

    def ready_count(self) -> int:
        return os.pread(self._fd, self.workers, 0).count(_READY)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/ready" and self.engines.ready:
            ready = self.ready_count()
            if ready < self.workers:
                body = orjson.dumps(
                    {
                        "status": "warming",
                        "workers": self.workers,
                        "workers_ready": ready,
                        "worker": self.index,
                    }
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def worker_main(argv: list[str]) -> int:
    """`python -m ember.workers INDEX COUNT STATE`, settings as JSON on stdin."""
    index, workers, state = int(argv[0]), int(argv[1]), Path(argv[2])
    settings = Settings.model_validate(json.loads(sys.stdin.buffer.read()))
    from ember import logs

    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    logs.setup(level=settings.log_level, json_logs=settings.json_logs, secrets=[secret])
    from ember.engine.registry import Engines

    parent = os.getppid()

    def orphaned() -> None:  # the supervisor was killed outright: do not outlive it
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="ember-parent-watch", daemon=True).start()
    engines = Engines(settings)
    engines.preload()  # load on a thread while the web stack imports, as `ember serve` does
    from ember.http.app import create_app
    from ember.http.serving import server

    app = create_app(settings, engines=engines)
    sock = reuseport_socket(settings.host, settings.port)
    sock.listen(_BACKLOG)
    gate = ReadyGate(app, engines=engines, index=index, workers=workers, state=state)
    server(app, settings, outer=gate).run(sockets=[sock])
    from ember.server import exit_now

    return exit_now(0)


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
