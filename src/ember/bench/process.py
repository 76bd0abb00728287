"""Spawn a server, wait for its probes, measure its process tree, stop it: one copy for bench
startup, bench load, deploy and the scripts under benchmarks/.

Times are `time.perf_counter()` seconds from the caller's `t0` (taken just before the spawn);
memory is MiB (2**20 bytes) of resident set over the whole process tree (workers included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ember.bench.client import Endpoint, HttpConnection, HttpError


class ServerFailed(Exception):
    """The server exited, or was not ready within the timeout."""


@dataclass(frozen=True, slots=True)
class Probes:
    """Seconds from spawn to the first TCP accept, first /health 200, first ready 200, and the
    first answer of the ready path that was 503 (the server saying "alive, not ready yet")."""

    port_seconds: float | None
    health_seconds: float | None
    ready_seconds: float
    not_ready_seconds: float | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_cmd(template: str, port: int) -> list[str]:
    """The argv of a server command: `{port}` replaced (other braces left alone), shell-split."""
    return shlex.split(template.replace("{port}", str(port)))


def spawn_server(
    argv: list[str], *, log: IO[bytes], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the server in a new session (its own process group), output to `log`."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ if env is None else env),
    )


def stop_server(
    proc: subprocess.Popen[bytes], *, timeout: float = 15.0
) -> tuple[int | None, float]:
    """SIGTERM the process group, SIGKILL it after `timeout` s → (exit code, seconds to exit).

    Whatever is left in the group after the leader exits is killed too, so no stray worker
    outlives a run.
    """
    start = time.perf_counter()
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=timeout)
    elapsed = time.perf_counter() - start
    _signal_group(proc.pid, signal.SIGKILL)
    return code, elapsed


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def drop_page_cache(paths: Iterable[str | Path]) -> tuple[int, int]:
    """Ask the kernel to drop every regular file under `paths` from the page cache
    (posix_fadvise DONTNEED; pages mapped by a running process stay) → (files, bytes).

    This is what a new node looks like to a starting pod: weights, artifacts and the Python
    libraries read from disk, not memory. Unlike `echo 1 > /proc/sys/vm/drop_caches` it needs no
    root and leaves the rest of the machine's cache alone.
    """
    files = size = 0
    for given in paths:
        root = Path(given)
        candidates = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in candidates:
            if path.is_symlink() or not path.is_file():
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                size += os.fstat(fd).st_size
                files += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return files, size


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` and all its descendants, MiB; None if it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def wait_ready(
    endpoint: Endpoint,
    proc: subprocess.Popen[bytes],
    *,
    t0: float,
    ready_path: str,
    health_path: str | None,
    ready_timeout: float,
    poll_interval: float = 0.02,
) -> Probes:
    """Poll until `ready_path` answers 200; times are `time.perf_counter()` seconds from `t0`.

    Raises ServerFailed if the process exits or `ready_timeout` seconds pass first.
    """
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=max(1.0, poll_interval * 50))
    port_s: float | None = None
    health_s: float | None = None
    not_ready_s: float | None = None
    health_probe = None if health_path == ready_path else health_path
    try:
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"server exited with code {proc.returncode} before ready")
            if time.perf_counter() - t0 > ready_timeout:
                raise ServerFailed(f"not ready after {ready_timeout:g} s")
            if port_s is None:
                try:
                    await conn.connect()
                except OSError:
                    await asyncio.sleep(poll_interval)
                    continue
                port_s = time.perf_counter() - t0
            try:
                if health_probe is not None and health_s is None:
                    status = (await conn.request("GET", endpoint.prefix + health_probe)).status
                    health_s = time.perf_counter() - t0 if status == 200 else None
                status = (await conn.request("GET", endpoint.prefix + ready_path)).status
                if status == 200:
                    ready_s = time.perf_counter() - t0
                    if health_path == ready_path:
                        health_s = ready_s
                    return Probes(port_s, health_s, ready_s, not_ready_s)
                if status == 503 and not_ready_s is None:
                    not_ready_s = time.perf_counter() - t0
            except HttpError:
                pass  # e.g. accepted, then closed while the server was still booting
            await asyncio.sleep(poll_interval)
    finally:
        await conn.close()


@dataclass(slots=True)
class Running:
    """A spawned server that answered its ready path: where, which pid, when, how big."""

    endpoint: Endpoint
    proc: subprocess.Popen[bytes]
    probes: Probes
    rss_mb: float | None
    exit_code: int | None = None
    """Set once stopped, like `stop_seconds` (from SIGTERM to exit)."""
    stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def running(
    argv: list[str],
    *,
    port: int,
    log_path: Path,
    ready_path: str = "/ready",
    health_path: str | None = "/health",
    ready_timeout: float = 300.0,
    stop_timeout: float = 15.0,
    poll_interval: float = 0.02,
    env: Mapping[str, str] | None = None,
) -> Iterator[Running]:
    """Spawn `argv` (already listening on `port`), wait until ready, yield it; stop its process
    group on the way out. ServerFailed if it never gets ready (it is stopped all the same)."""
    endpoint = Endpoint("127.0.0.1", port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = spawn_server(argv, log=log, env=env)
        server: Running | None = None
        try:
            probes = asyncio.run(
                wait_ready(
                    endpoint,
                    proc,
                    t0=t0,
                    ready_path=ready_path,
                    health_path=health_path,
                    ready_timeout=ready_timeout,
                    poll_interval=poll_interval,
                )
            )
            server = Running(endpoint, proc, probes, tree_rss_mb(proc.pid))
            yield server
        finally:
            code, seconds = stop_server(proc, timeout=stop_timeout)
            if server is not None:
                server.exit_code, server.stop_seconds = code, seconds
