"""`ember bench startup`: how long a server takes to be ready, and whether ready means warm.

Each run spawns the server command on a free port and measures, from the spawn:
- when the port first accepted a connection, `/health` first answered 200 and the ready path
  first answered 200 (polled every `poll_interval` seconds on one keep-alive connection);
- the RSS of the server's whole process tree at ready;
- for each shape class, the first request's latency against the median of `repeats` later
  ones (all first requests go first, in class order, then the repeats of each class).
The server is then stopped with SIGTERM to its process group, SIGKILL after `stop_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ember.bench.client import (
    Api,
    Endpoint,
    HttpConnection,
    HttpError,
    build_body,
    count_embeddings,
    make_text,
)

DEFAULT_CMD = f"{shlex.quote(sys.executable)} -m ember serve --host 127.0.0.1 --port {{port}}"


@dataclass(frozen=True, slots=True)
class ShapeClass:
    """One request shape: `texts` texts of `words` words each (≈ words + 2 tokens)."""

    texts: int
    words: int


# DESIGN.md "How we measure": 1 short text, 1 text over the model's max length (256 word-pieces
# for all-MiniLM-L6-v2), 32 medium texts, 8 long texts.
SHAPE_CLASSES: dict[str, ShapeClass] = {
    "short": ShapeClass(texts=1, words=6),
    "long": ShapeClass(texts=1, words=400),
    "medium32": ShapeClass(texts=32, words=40),
    "long8": ShapeClass(texts=8, words=200),
}


IDLE_GAP = 0.2
"""Seconds of quiet before each idle-matched request: the first request of a class also
follows a pause, and on these VMs any request after ≥10 ms idle costs about 2 ms more."""
IDLE_REPEATS = 5


@dataclass(slots=True)
class ClassResult:
    """First-request latency of one shape class against the median of the later ones."""

    first_ms: float | None
    steady_median_ms: float | None
    ratio: float | None
    """first_ms / steady_median_ms: 1.0 means the first request was as fast as the rest."""
    first_status: int | None
    steady_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    idle_median_ms: float | None = None
    """Median of requests each sent after `IDLE_GAP` seconds of quiet, like the first one."""
    ratio_idle: float | None = None
    """first_ms / idle_median_ms: the cold-path cost alone, without the cost of waking an
    idle machine (which every request after a pause pays, first or not)."""


@dataclass(slots=True)
class RunResult:
    """One spawn of the server. Times are seconds from spawn; RSS in MiB (2**20 bytes)."""

    run: int
    port: int
    port_seconds: float | None
    health_seconds: float | None
    ready_seconds: float
    rss_mb_at_ready: float | None
    classes: dict[str, ClassResult]
    exit_code: int | None = None
    stop_seconds: float | None = None
    log: str | None = None


class ServerFailed(Exception):
    """The server exited, or was not ready within the timeout."""


@dataclass(frozen=True, slots=True)
class Probes:
    """Seconds from spawn to the first TCP accept, first /health 200, first ready 200."""

    port_seconds: float | None
    health_seconds: float | None
    ready_seconds: float


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
                if (await conn.request("GET", endpoint.prefix + ready_path)).status == 200:
                    ready_s = time.perf_counter() - t0
                    if health_path == ready_path:
                        health_s = ready_s
                    return Probes(port_s, health_s, ready_s)
            except HttpError:
                pass  # e.g. accepted, then closed while the server was still booting
            await asyncio.sleep(poll_interval)
    finally:
        await conn.close()


async def timed_request(
    conn: HttpConnection, path: str, body: bytes, api: Api, expect: int
) -> tuple[float, int | None, str | None]:
    """One embed request → (milliseconds, status or None, error key or None)."""
    start = time.perf_counter()
    try:
        response = await conn.request("POST", path, body)
    except HttpError as exc:
        return (time.perf_counter() - start) * 1000, None, exc.kind
    ms = (time.perf_counter() - start) * 1000
    if response.status != 200:
        return ms, response.status, str(response.status)
    try:
        if count_embeddings(api, response.body) != expect:
            return ms, 200, "bad_body"
    except ValueError:
        return ms, 200, "bad_body"
    return ms, 200, None


async def measure_classes(
    endpoint: Endpoint,
    *,
    api: Api,
    embed_path: str,
    model: str | None,
    repeats: int,
    rng: random.Random,
    classes: Mapping[str, ShapeClass] = SHAPE_CLASSES,
    request_timeout: float = 120.0,
) -> dict[str, ClassResult]:
    """The first request of every class, then `repeats` more of each, on one connection.

    Every request carries fresh texts (no cache can help); only successful requests count.
    """
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=request_timeout)
    path = endpoint.prefix + embed_path

    def body(shape: ShapeClass) -> bytes:
        texts = [make_text(rng, shape.words) for _ in range(shape.texts)]
        return build_body(api, texts, model=model)

    results: dict[str, ClassResult] = {}
    try:
        for name, shape in classes.items():
            ms, status, error = await timed_request(conn, path, body(shape), api, shape.texts)
            results[name] = ClassResult(
                first_ms=None if error else round(ms, 3),
                steady_median_ms=None,
                ratio=None,
                first_status=status,
            )
            if error:
                results[name].errors[error] = 1
        for name, shape in classes.items():
            result = results[name]
            for _ in range(repeats):
                ms, _, error = await timed_request(conn, path, body(shape), api, shape.texts)
                if error:
                    result.errors[error] = result.errors.get(error, 0) + 1
                else:
                    result.steady_ms.append(round(ms, 3))
            if result.steady_ms:
                result.steady_median_ms = round(statistics.median(result.steady_ms), 3)
                if result.first_ms is not None:
                    result.ratio = round(result.first_ms / result.steady_median_ms, 3)
            idle: list[float] = []
            for _ in range(IDLE_REPEATS):
                await asyncio.sleep(IDLE_GAP)
                ms, _, error = await timed_request(conn, path, body(shape), api, shape.texts)
                if not error:
                    idle.append(ms)
            if idle:
                result.idle_median_ms = round(statistics.median(idle), 3)
                if result.first_ms is not None:
                    result.ratio_idle = round(result.first_ms / result.idle_median_ms, 3)
    finally:
        await conn.close()
    return results


@dataclass(frozen=True, slots=True)
class StartupConfig:
    """What `ember bench startup` runs; paths are relative to the server's root."""

    cmd: str = DEFAULT_CMD
    runs: int = 3
    api: Api = "tei"
    ready_path: str = "/ready"
    health_path: str | None = "/health"
    embed_path: str | None = None
    model: str | None = None
    label: str = "ember"
    repeats: int = 20
    ready_timeout: float = 300.0
    stop_timeout: float = 15.0
    poll_interval: float = 0.02
    seed: int = 0


def run_once(config: StartupConfig, *, index: int, embed_path: str, log_path: Path) -> RunResult:
    """Spawn, measure and stop the server once. ServerFailed if it never became ready."""
    port = free_port()
    endpoint = Endpoint("127.0.0.1", port)
    rng = random.Random(config.seed * 1000 + index)
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = spawn_server(render_cmd(config.cmd, port), log=log)
        try:
            probes = asyncio.run(
                wait_ready(
                    endpoint,
                    proc,
                    t0=t0,
                    ready_path=config.ready_path,
                    health_path=config.health_path,
                    ready_timeout=config.ready_timeout,
                    poll_interval=config.poll_interval,
                )
            )
            rss = tree_rss_mb(proc.pid)
            classes = asyncio.run(
                measure_classes(
                    endpoint,
                    api=config.api,
                    embed_path=embed_path,
                    model=config.model,
                    repeats=config.repeats,
                    rng=rng,
                )
            )
        finally:
            exit_code, stop_seconds = stop_server(proc, timeout=config.stop_timeout)
    return RunResult(
        run=index,
        port=port,
        port_seconds=_round(probes.port_seconds),
        health_seconds=_round(probes.health_seconds),
        ready_seconds=round(probes.ready_seconds, 4),
        rss_mb_at_ready=None if rss is None else round(rss, 1),
        classes=classes,
        exit_code=exit_code,
        stop_seconds=round(stop_seconds, 3),
        log=str(log_path),
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize(runs: list[RunResult]) -> dict[str, float | None]:
    """Medians and maxima over the successful runs; worst_ratio is the largest class ratio."""
    ready = [r.ready_seconds for r in runs]
    port = [r.port_seconds for r in runs if r.port_seconds is not None]
    health = [r.health_seconds for r in runs if r.health_seconds is not None]
    rss = [r.rss_mb_at_ready for r in runs if r.rss_mb_at_ready is not None]
    ratios = [c.ratio for r in runs for c in r.classes.values() if c.ratio is not None]
    idle = [c.ratio_idle for r in runs for c in r.classes.values() if c.ratio_idle is not None]
    return {
        "ready_seconds_median": statistics.median(ready) if ready else None,
        "ready_seconds_max": max(ready) if ready else None,
        "port_seconds_median": statistics.median(port) if port else None,
        "health_seconds_median": statistics.median(health) if health else None,
        "rss_mb_at_ready_median": statistics.median(rss) if rss else None,
        "worst_ratio": max(ratios) if ratios else None,
        "worst_ratio_idle": max(idle) if idle else None,
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and count, load, OS, Python."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def run_startup(config: StartupConfig, *, out_dir: Path) -> dict[str, Any]:
    """All runs of one server → the result document (see module doc); logs go under out_dir.

    `runs` holds successful runs only (so every `runs[*].ready_seconds` is a number);
    failures are listed in `failed_runs` with the tail of their log.
    """
    from ember.bench.client import DEFAULT_EMBED_PATHS

    embed_path = config.embed_path or DEFAULT_EMBED_PATHS[config.api]
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    failed: list[dict[str, Any]] = []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    for index in range(config.runs):
        log_path = out_dir / f"startup-{config.label}-run{index}.log"
        try:
            runs.append(run_once(config, index=index, embed_path=embed_path, log_path=log_path))
        except ServerFailed as exc:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            failed.append({"run": index, "error": str(exc), "log_tail": tail})
    return {
        "kind": "startup",
        "label": config.label,
        "cmd": config.cmd,
        "api": config.api,
        "ready_path": config.ready_path,
        "health_path": config.health_path,
        "embed_path": embed_path,
        "model": config.model,
        "repeats": config.repeats,
        "shape_classes": {name: asdict(shape) for name, shape in SHAPE_CLASSES.items()},
        "created": started,
        "machine": machine,
        "runs": [asdict(run) for run in runs],
        "failed_runs": failed,
        "summary": summarize(runs),
    }


def print_startup(result: Mapping[str, Any]) -> None:
    """A rich table: one row per run; per shape class "first / steady ms, ratio"."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"startup: {result['label']}  ({result['cmd']})")
    for name in ("run", "port s", "health s", "ready s", "RSS MiB"):
        table.add_column(name, justify="right")
    for name in SHAPE_CLASSES:
        table.add_column(f"{name} first/steady ms", justify="right")
    for run in result["runs"]:
        cells = [
            str(run["run"]),
            _fmt(run["port_seconds"], "{:.2f}"),
            _fmt(run["health_seconds"], "{:.2f}"),
            _fmt(run["ready_seconds"], "{:.2f}"),
            _fmt(run["rss_mb_at_ready"], "{:.0f}"),
        ]
        for name in SHAPE_CLASSES:
            c = run["classes"].get(name, {})
            cell = (
                f"{_fmt(c.get('first_ms'), '{:.1f}')}/{_fmt(c.get('steady_median_ms'), '{:.1f}')}"
            )
            ratio = c.get("ratio")
            if ratio is not None:
                style = "red" if ratio > 2 else "yellow" if ratio > 1.3 else "green"
                cell += f" [{style}]×{ratio:.2f}[/{style}]"
            if c.get("ratio_idle") is not None:
                cell += f" (idle ×{c['ratio_idle']:.2f})"
            if c.get("errors"):
                cell += f" [red]errors {c['errors']}[/red]"
            cells.append(cell)
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    summary = result["summary"]
    console.print(
        f"ready median {_fmt(summary['ready_seconds_median'], '{:.2f}')} s, "
        f"max {_fmt(summary['ready_seconds_max'], '{:.2f}')} s, "
        f"worst first/steady ratio {_fmt(summary['worst_ratio'], '{:.2f}')} "
        f"(vs idle-matched steady: {_fmt(summary.get('worst_ratio_idle'), '{:.2f}')})"
    )
    for failure in result["failed_runs"]:
        console.print(f"[red]run {failure['run']} failed: {failure['error']}[/red]")
        console.print(failure["log_tail"], markup=False, highlight=False)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else spec.format(value)
