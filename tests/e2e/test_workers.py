"""`ember serve --workers 2`: two replicas on one port, ready together, stopped together, and
replaced when one is killed or hangs."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Server, get

pytestmark = pytest.mark.e2e


def test_two_workers_share_the_port_and_stop_on_sigterm(ember_cache: Path, tmp_path: Path) -> None:
    srv = Server("--workers", "2", env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / "log")
    try:
        srv.wait_ready()
        workers = psutil.Process(srv.proc.pid).children()
        assert len(workers) == 2
        for worker in workers:
            ports = {c.laddr.port for c in worker.net_connections() if c.status == "LISTEN"}
            assert srv.port in ports
        for _ in range(20):  # fresh connections: the kernel spreads them over both
            status, _ = get(srv.url + "/ready")
            assert status == 200
    finally:
        code = srv.stop()
    assert code == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def _pool(ember_cache: Path, tmp_path: Path, *args: str) -> Server:
    return Server(
        "--workers", "2", "--worker-heartbeat-timeout", "1", "--shutdown-timeout", "1", *args,
        env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / "log",
    )  # fmt: skip


def _workers(srv: Server) -> list[psutil.Process]:
    return psutil.Process(srv.proc.pid).children()


def _wait(condition: Callable[[], bool], *, timeout: float, what: str, srv: Server) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout} s: {srv.logs()}")
        time.sleep(0.05)
    return time.monotonic() - started


def _ready(srv: Server) -> int:
    try:
        return get(srv.url + "/ready", timeout=0.5)[0]
    except OSError:
        return 0


def _embed(srv: Server) -> int:
    request = urllib.request.Request(
        srv.url + "/embed", data=b'{"inputs": "still served"}',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
def test_a_killed_or_hung_worker_is_replaced_and_ready_says_so(
    ember_cache: Path, tmp_path: Path, fault: signal.Signals
) -> None:
    srv = _pool(ember_cache, tmp_path)
    try:
        srv.wait_ready()
        victim = _workers(srv)[0]
        victim.send_signal(fault)
        # Not ready from (almost) the moment it died or stopped beating; never from stale state.
        _wait(lambda: _ready(srv) == 503, timeout=2.5, what="/ready 503", srv=srv)
        _wait(
            lambda: victim.pid not in {w.pid for w in _workers(srv)},
            timeout=3,
            what="replaced",
            srv=srv,
        )
        answers: list[int] = []

        def ready_again() -> bool:
            # The survivor serves everything while the replacement warms: a replacement joins
            # the port only once ready (a stopped worker's queued connections are lost before).
            if fault == signal.SIGKILL:
                answers.append(_embed(srv))
            return _ready(srv) == 200

        _wait(ready_again, timeout=25, what="ready again", srv=srv)
        if fault == signal.SIGKILL:
            assert answers and set(answers) <= {200}, answers
        assert len(_workers(srv)) == 2
        # Every fresh connection lands on a live worker again.
        assert all(_embed(srv) == 200 for _ in range(10))
    finally:
        code = srv.stop(timeout=5)
    logs = srv.log_path.read_text()
    assert code == 0, logs[-3000:]
    assert "restarting in" in logs


def test_a_killed_supervisor_leaves_no_worker_and_no_shared_file(
    ember_cache: Path, tmp_path: Path
) -> None:
    before = set(Path("/dev/shm").glob("ember-workers-*"))
    srv = _pool(ember_cache, tmp_path)
    try:
        srv.wait_ready()
        workers = _workers(srv)
        assert set(Path("/dev/shm").glob("ember-workers-*")) - before
        srv.proc.kill()
        srv.proc.wait()

        def gone() -> bool:
            return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

        _wait(gone, timeout=5, what="workers gone", srv=srv)
        _wait(
            lambda: not (set(Path("/dev/shm").glob("ember-workers-*")) - before),
            timeout=2, what="shared file removed", srv=srv,
        )  # fmt: skip
    finally:
        srv.stop(timeout=5)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
