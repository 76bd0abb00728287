"""`ember serve --workers N`: N replicas of the whole server on one port, ready together,
replaced when they die or hang.

Why replicas: on a GPU one ember process is bound by Python (HTTP parsing, validation,
tokenisation, JSON), not by the device: measured on an H100 (docs/gpu.md), one process serves
about 1,500 single-text requests/s at concurrency 32 with the GPU mostly idle, and a process with
a backend that costs nothing serves only about 2,000. Replicas scale with CPU cores; each holds
its own model copy, CUDA context and graphs (about 1.5 GB of GPU memory for all-MiniLM-L6-v2).
Several HTTP processes feeding one GPU process would save that memory but add a copy and two
process hops per batch; at these model sizes memory is cheap and the hops are not.

How: the supervisor (this process) starts N `python -m ember.workers` children and hands each
its settings on stdin (the API key never goes on a command line). Every child binds the port
with SO_REUSEPORT, so the kernel spreads connections over them, and publishes its stage and a
heartbeat (from its event loop, every 0.1 s) in a small shared file.

The rules:
- `/ready` answers 200 only while every worker is ready and has beaten within the last
  second, so a load balancer never sees "ready" while a sibling warms, is restarting or hangs.
- A worker that exits while the server is not stopping is started again after a back-off
  (0.5 s, doubling to 10 s; reset once it is ready); its slot reads "not ready" at once. The
  replacement binds the shared port only once it is ready, so the kernel sends it no
  connections while it loads (its siblings serve them).
- A worker whose heartbeat is older than `--worker-heartbeat-timeout` (stopped, or its event
  loop blocked) is killed and replaced the same way: its socket would otherwise swallow the
  connections the kernel gives it.
- SIGTERM, SIGINT and SIGHUP are passed on (each child drains; a second signal finishes now);
  a child still there after the shutdown budget is killed.
- The shared file is removed on every exit: by the supervisor, or, if the supervisor was
  killed outright, by the workers, which notice and stop; files of dead supervisors are
  removed at the next start.
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
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ember.worker_state import _CODES, _READY, SharedState, remove_orphans

if TYPE_CHECKING:
    from ember.settings import Settings

__all__ = ["ReadyGate", "SharedState", "remove_orphans", "reuseport_socket", "supervise"]

log = logging.getLogger("ember.workers")

_BACKLOG = 2048
_BEAT_SECONDS = 0.1
_BACKOFF = (0.5, 10.0)
# A worker answers its last requests by the shutdown timeout + 0.2 s and exits well within 1 s
# after it; one still there after this (stopped, stuck) is killed, so the whole server is gone
# within the timeout + 1 s too.
_KILL_AFTER = 0.9


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


@dataclass
class _Slot:
    index: int
    child: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: int = 0
    restart_at: float | None = None
    ready_once: bool = False


def supervise(
    settings: Settings, devices: list[str | None], listener: socket.socket | None = None
) -> int:
    """Run a replica per entry of `devices` (its CUDA_VISIBLE_DEVICES, None: inherited),
    replacing any that dies or hangs, until a signal. `listener`: the port `python -m ember`
    bound and answered probes on before any heavy import (ember.early); the first worker
    inherits it and answers on it from its own first moment, so no probe goes unanswered."""
    from ember import gpus

    n = len(devices)
    # Port 0: pick one free port for all. The reserving socket never listens, so the kernel
    # sends it no connections; it only keeps the port ours while children (re)bind it.
    wanted = listener.getsockname()[1] if listener is not None else settings.port
    reserve = reuseport_socket(settings.host, wanted)
    port = reserve.getsockname()[1]
    state = SharedState.create(workers=n)
    payload = _settings_payload(settings, port=port)
    slots = [_Slot(index=i) for i in range(n)]

    def start(slot: _Slot) -> None:
        state.clear(slot.index)
        env = dict(os.environ)
        if devices[slot.index] is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(devices[slot.index])
        inherit = listener is not None and slot.index == 0 and not slot.restarts
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which passes
        # it on once (a second signal would make a child skip draining).
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "ember.workers"),
                *(str(slot.index), str(n), str(state.path)),
                *(["late"] if slot.restarts else []),
                f"plan={gpus.encode_plan(devices)}",
                *([f"fd={listener.fileno()}"] if inherit and listener else []),
            ],
            stdin=subprocess.PIPE,
            process_group=0,
            env=env,
            pass_fds=(listener.fileno(),) if inherit and listener else (),
        )
        assert child.stdin is not None
        child.stdin.write(payload)
        child.stdin.close()
        slot.child, slot.restart_at, slot.ready_once = child, None, False

    begun = time.monotonic()
    for slot in slots:
        start(slot)
    if listener is not None:
        listener.close()  # the first worker holds it now; a replacement binds its own
    log.info(
        "started %d workers on port %d (pids %s, CUDA_VISIBLE_DEVICES %s)",
        n, port, [s.child.pid for s in slots if s.child], devices,
    )  # fmt: skip

    stopping = threading.Event()
    stop_deadline = [float("inf")]

    def forward(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stop_deadline[0] = time.monotonic() + settings.shutdown_timeout + _KILL_AFTER
        else:
            stop_deadline[0] = min(stop_deadline[0], time.monotonic() + _KILL_AFTER)
        stopping.set()
        for slot in slots:
            if slot.child is not None and slot.child.poll() is None:
                slot.child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    announced = False
    try:
        while True:
            now = time.monotonic()
            shared = state.read()
            if stopping.is_set():
                alive = [s.child for s in slots if s.child is not None and s.child.poll() is None]
                if not alive:
                    break
                if now > stop_deadline[0]:
                    log.error(
                        "workers %s still running after the shutdown budget: killing",
                        [c.pid for c in alive],
                    )
                    for child in alive:
                        child.kill()
                time.sleep(0.05)
                continue
            for slot in slots:
                _watch(slot, shared=shared, now=now, state=state, settings=settings, start=start)
            if not announced and state.ready_count() == n:
                announced = True
                log.info("all %d workers ready in %.2f s", n, now - begun)
            time.sleep(0.05)
    finally:
        reserve.close()
        state.close(remove=True)
    codes = [s.child.returncode or 0 for s in slots if s.child is not None]
    return max(codes, default=0)


def _watch(
    slot: _Slot,
    *,
    shared: list[tuple[int, float]],
    now: float,
    state: SharedState,
    settings: Settings,
    start: Callable[[_Slot], None],
) -> None:
    """One supervisor tick for one worker: restart it when due, notice death or a hang."""
    if slot.restart_at is not None:
        if now >= slot.restart_at:
            slot.restarts += 1
            start(slot)
            log.info(
                "worker %d restarted (pid %d)", slot.index, slot.child.pid if slot.child else -1
            )
        return
    child = slot.child
    assert child is not None
    code, beat = shared[slot.index]
    if code == _READY and not slot.ready_once:
        slot.ready_once, slot.failures = True, 0
    why = ""
    if child.poll() is not None:
        why = f"exited with {child.returncode}"
    elif beat and now - beat > settings.worker_heartbeat_timeout:
        why = f"sent no heartbeat for {now - beat:.1f} s: killed"
        child.kill()  # SIGKILL also ends a stopped process
        child.wait()
    if not why:
        return
    state.clear(slot.index)  # not ready from this moment, whatever the file said
    delay = min(_BACKOFF[1], _BACKOFF[0] * 2**slot.failures)
    slot.failures += 1
    slot.restart_at = now + delay
    log.error("worker %d (pid %d) %s; restarting in %.1f s", slot.index, child.pid, why, delay)


# --- one worker ------------------------------------------------------------------------------


class ReadyGate:
    """ASGI wrapper: publishes this worker's stage and heartbeat, and holds `/ready` at 503
    until every worker is ready and alive (the app's own `/ready` answers when they are)."""

    def __init__(self, app: Any, *, engines: Any, index: int, workers: int, state: Path) -> None:
        self.app = app
        self.engines = engines
        self.index = index
        self.workers = workers
        self.state = SharedState(state, workers=workers)
        self._loop_beat = 0.0
        self._beat_task: Any = None  # held: a task nobody references may be collected
        self.on_ready: Callable[[], Awaitable[None]] | None = None
        """Run once, on the event loop, when this worker is first ready."""
        threading.Thread(target=self._publish, name="ember-ready-gate", daemon=True).start()

    def _publish(self) -> None:
        last = -1
        while True:
            code = _CODES.get(self.engines.stage.value, 0)
            if code != last:
                self.state.publish(self.index, code)
                last = code
            # The heartbeat is the event loop's (a loop that stopped turning serves nothing);
            # until the loop runs, this thread's, so a worker that hangs while loading is seen.
            self.state.beat(self.index, self._loop_beat or time.monotonic())
            # Fast while starting up (readiness is announced within 5 ms), slow once ready.
            time.sleep(0.005 if code < _READY else _BEAT_SECONDS)

    async def _beat(self) -> None:
        import asyncio

        while True:
            self._loop_beat = time.monotonic()
            if self.on_ready is not None and self.engines.ready:
                on_ready, self.on_ready = self.on_ready, None
                try:
                    await on_ready()
                except Exception:
                    log.exception("worker %d: on-ready step failed", self.index)
            await asyncio.sleep(_BEAT_SECONDS)

    def ready_count(self) -> int:
        return self.state.ready_count()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and not self._loop_beat:
            import asyncio

            self._loop_beat = time.monotonic()
            self._beat_task = asyncio.get_running_loop().create_task(self._beat())
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
    """`python -m ember.workers INDEX COUNT STATE [late] plan=D,D.. [fd=N]`, settings as JSON on
    stdin; `plan`: every worker's CUDA_VISIBLE_DEVICES (`-`: inherited), for /info;
    `late`: a replacement, which takes connections on the shared port only once ready; `fd=N`:
    the supervisor's listening socket to serve on (already bound and listening)."""
    index, workers, state = int(argv[0]), int(argv[1]), Path(argv[2])
    late = "late" in argv[3:]
    inherited = next((int(a[3:]) for a in argv[3:] if a.startswith("fd=")), None)
    plan = next((a[5:] for a in argv[3:] if a.startswith("plan=")), "-," * (workers - 1) + "-")
    raw = json.loads(sys.stdin.buffer.read())
    from ember import early, gpus

    gpus.set_role(worker=index, devices=gpus.decode_plan(plan))

    if not late:
        # Probes from this process's first moment, before pydantic and the web stack import.
        sock = socket.socket(fileno=inherited) if inherited is not None else None
        if sock is None:
            sock = reuseport_socket(raw["host"], raw["port"])
            sock.listen(_BACKLOG)
        early.answer_on(sock, host=raw["host"], port=raw["port"])
    early.warm_cuda(raw["device"])
    from ember.settings import Settings

    settings = Settings.model_validate(raw)
    from ember import logs

    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    logs.setup(level=settings.log_level, json_logs=settings.json_logs, secrets=[secret])
    from ember.engine.registry import Engines

    parent = os.getppid()

    def orphaned() -> None:  # the supervisor was killed outright: do not outlive it
        while os.getppid() == parent:
            time.sleep(0.2)
        state.unlink(missing_ok=True)  # nobody else will
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="ember-parent-watch", daemon=True).start()
    engines = Engines(settings)
    early.describe_with(engines.snapshot)
    engines.preload()  # load on a thread while the web stack imports, as `ember serve` does
    from ember.http.app import create_app
    from ember.http.serving import server

    app = create_app(settings, engines=engines)
    gate = ReadyGate(app, engines=engines, index=index, workers=workers, state=state)
    served = server(app, settings, outer=gate)
    if late:
        # A replacement joins the port only once warm: the kernel would otherwise give it its
        # share of new connections while it loads (503s), though its siblings are ready. Until
        # then uvicorn serves a private socket nobody uses.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        gate.on_ready = lambda: _join_port(served, settings)
    else:
        taken = early.take(host=settings.host, port=settings.port)
        assert taken is not None  # answer_on registered it above
        sock = taken
    served.run(sockets=[sock])

    return logs.exit_now(0)


async def _join_port(served: Any, settings: Settings) -> None:
    """Start accepting on the shared port with uvicorn's own protocol and state (`served` is
    the running uvicorn server; its shutdown closes this listener with the others)."""
    import asyncio

    if served.should_exit:
        return
    config = served.config
    sock = reuseport_socket(settings.host, settings.port)

    def protocol() -> asyncio.Protocol:
        made: asyncio.Protocol = config.http_protocol_class(
            config=config, server_state=served.server_state, app_state=served.lifespan.state
        )
        return made

    listener = await asyncio.get_running_loop().create_server(protocol, sock=sock, backlog=_BACKLOG)
    served.servers.append(listener)
    log.info("worker: ready; now taking connections on port %d", settings.port)


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
