"""`ember serve --workers 2`: two replicas on one port, ready together, stopped together."""

from __future__ import annotations

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
