"""Real `ember serve` subprocesses on free ports, driven by real clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.bench.process import free_port, spawn_server


def get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_json(url: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    """POST JSON and return the decoded answer; any HTTP error fails the test with its body."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url} → {e.code}: {e.read()[:500]!r}") from e


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "ember",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self.started = time.monotonic()
        self.proc = spawn_server(cmd, log=self._log, env={**os.environ, **(env or {})})

    def wait_health(self, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, body = get(self.url + "/health", timeout=0.5)
                if status == 200:
                    return time.monotonic() - self.started, body
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"/health never answered: {self.logs()}")

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, body = get(self.url + "/ready", timeout=1.0)
                if status == 200:
                    return body
                if body.get("status") == "failed":
                    raise AssertionError(f"failed: {body}")
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"never ready: {self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def ember_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the whole e2e session, the built-in model prepared into it once
    by `ember prepare` in its own process: servers start from the artifact, as in production,
    and never import torch (so their RSS is a serving process's)."""
    cache = tmp_path_factory.mktemp("ember-cache")
    subprocess.run(
        [sys.executable, "-m", "ember", "prepare"],
        env={**os.environ, "EMBER_CACHE_DIR": str(cache)},
        check=True,
        capture_output=True,
        timeout=240,
    )
    return cache


@pytest.fixture(scope="module")
def server(ember_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        "--max-client-batch-size",
        "64",
        env={"EMBER_CACHE_DIR": str(ember_cache)},
        log=tmp_path_factory.mktemp("logs") / "server.log",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
