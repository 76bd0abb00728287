"""`ember bench startup`: how long a server takes to be ready, and whether ready means warm.

Each run spawns the server command on a free port and measures, from the spawn:
- when the port first accepted a connection, `/health` first answered 200 (probe time), the
  ready path first answered 503 (alive, still loading) and first answered 200 (polled every
  `poll_interval` seconds on one keep-alive connection);
- the RSS of the server's whole process tree at ready;
- for each shape class, the first request's latency against the median of `repeats` later
  ones (all first requests go first, in class order, then the repeats of each class).
The server is then stopped with SIGTERM to its process group, SIGKILL after `stop_timeout`.
The first `cold_runs` runs start after their files are dropped from the page cache (a new
node's bad day: `process.drop_page_cache`).
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ember.bench.client import Api, Endpoint, HttpConnection, HttpError
from ember.bench.process import (
    ServerFailed,
    drop_page_cache,
    free_port,
    render_cmd,
    running,
)
from ember.bench.workloads import Embed, Request, Workload, check

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
    not_ready_seconds: float | None = None
    """Spawn → the first 503 from the ready path: the server alive and saying it is loading."""
    page_cache: str = "warm"
    """"cold" when the run started after its files were dropped from the page cache."""


async def timed_request(
    conn: HttpConnection, request: Request, prefix: str = ""
) -> tuple[float, int | None, str | None]:
    """One request → (milliseconds, status or None, error key or None)."""
    start = time.perf_counter()
    try:
        response = await conn.request("POST", prefix + request.path, request.body)
    except HttpError as exc:
        return (time.perf_counter() - start) * 1000, None, exc.kind
    ms = (time.perf_counter() - start) * 1000
    if response.status != 200:
        return ms, response.status, str(response.status)
    return ms, 200, None if check(request, response.body) else "bad_body"


def embed_classes(
    api: Api, *, embed_path: str | None = None, model: str | None = None
) -> dict[str, Workload]:
    """SHAPE_CLASSES as embed workloads of `api`."""
    return {
        name: Embed(api=api, batch=shape.texts, words=shape.words, model=model, path=embed_path)
        for name, shape in SHAPE_CLASSES.items()
    }


async def measure_classes(
    endpoint: Endpoint,
    classes: Mapping[str, Workload],
    *,
    repeats: int,
    rng: random.Random,
    request_timeout: float = 120.0,
) -> dict[str, ClassResult]:
    """The first request of every class, then `repeats` more of each back to back and
    IDLE_REPEATS each after IDLE_GAP s of quiet, on one connection.

    Every request carries fresh texts (no cache can help); only successful requests count.
    """
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=request_timeout)
    prefix = endpoint.prefix
    results: dict[str, ClassResult] = {}
    try:
        for name, workload in classes.items():
            ms, status, error = await timed_request(conn, workload.request(rng), prefix)
            results[name] = ClassResult(
                first_ms=None if error else round(ms, 3),
                steady_median_ms=None,
                ratio=None,
                first_status=status,
            )
            if error:
                results[name].errors[error] = 1
        for name, workload in classes.items():
            result = results[name]
            for _ in range(repeats):
                ms, _, error = await timed_request(conn, workload.request(rng), prefix)
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
                ms, _, error = await timed_request(conn, workload.request(rng), prefix)
                if error:
                    result.errors[error] = result.errors.get(error, 0) + 1
                else:
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
    shape_classes: bool = True
    """Measure the first request of each shape class (deploy only needs the probe times)."""
    cold_runs: int = 0
    """The first `cold_runs` runs start after `evict_paths` are dropped from the page cache."""
    evict_paths: tuple[str, ...] = ()

    def classes(self) -> dict[str, Workload]:
        return embed_classes(self.api, embed_path=self.embed_path, model=self.model)


def run_once(config: StartupConfig, *, index: int, log_path: Path) -> RunResult:
    """Spawn, measure and stop the server once. ServerFailed if it never became ready."""
    cold = index < config.cold_runs
    if cold:
        drop_page_cache(config.evict_paths)
    port = free_port()
    rng = random.Random(config.seed * 1000 + index)
    with running(
        render_cmd(config.cmd, port),
        port=port,
        log_path=log_path,
        ready_path=config.ready_path,
        health_path=config.health_path,
        ready_timeout=config.ready_timeout,
        stop_timeout=config.stop_timeout,
        poll_interval=config.poll_interval,
    ) as server:
        classes = (
            asyncio.run(
                measure_classes(server.endpoint, config.classes(), repeats=config.repeats, rng=rng)
            )
            if config.shape_classes
            else {}
        )
    probes = server.probes
    return RunResult(
        run=index,
        port=port,
        port_seconds=_round(probes.port_seconds),
        health_seconds=_round(probes.health_seconds),
        ready_seconds=round(probes.ready_seconds, 4),
        rss_mb_at_ready=None if server.rss_mb is None else round(server.rss_mb, 1),
        classes=classes,
        exit_code=server.exit_code,
        stop_seconds=_round(server.stop_seconds, 3),
        log=str(log_path),
        not_ready_seconds=_round(probes.not_ready_seconds),
        page_cache="cold" if cold else "warm",
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize(runs: list[RunResult]) -> dict[str, float | None]:
    """Medians and maxima over the successful runs; worst_ratio is the largest class ratio."""
    ready = [r.ready_seconds for r in runs]
    port = [r.port_seconds for r in runs if r.port_seconds is not None]
    health = [r.health_seconds for r in runs if r.health_seconds is not None]
    not_ready = [r.not_ready_seconds for r in runs if r.not_ready_seconds is not None]
    cold = [r.ready_seconds for r in runs if r.page_cache == "cold"]
    rss = [r.rss_mb_at_ready for r in runs if r.rss_mb_at_ready is not None]
    ratios = [c.ratio for r in runs for c in r.classes.values() if c.ratio is not None]
    idle = [c.ratio_idle for r in runs for c in r.classes.values() if c.ratio_idle is not None]
    return {
        "ready_seconds_median": statistics.median(ready) if ready else None,
        "ready_seconds_max": max(ready) if ready else None,
        "port_seconds_median": statistics.median(port) if port else None,
        "health_seconds_median": statistics.median(health) if health else None,
        "health_seconds_max": max(health) if health else None,
        "not_ready_seconds_median": statistics.median(not_ready) if not_ready else None,
        "ready_seconds_cold_max": max(cold) if cold else None,
        "rss_mb_at_ready_median": statistics.median(rss) if rss else None,
        "worst_ratio": max(ratios) if ratios else None,
        "worst_ratio_idle": max(idle) if idle else None,
    }


def serving_files(argv: list[str]) -> tuple[str, ...]:
    """What a server started by `argv` reads at start: the Python libraries, ember's artifact
    cache and every existing path named in `argv` (model folders, `name=folder` included)."""
    import sysconfig

    from ember.settings import Settings

    layout = sysconfig.get_paths()
    paths = {layout[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(str(Settings().cache_dir))
    for arg in argv:
        candidate = arg.split("=", 1)[-1]
        if candidate.startswith(("/", ".")) and Path(candidate).exists():
            paths.add(str(Path(candidate).resolve()))
    return tuple(sorted(paths))


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
            runs.append(run_once(config, index=index, log_path=log_path))
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
        "cold_runs": config.cold_runs,
        "evicted": list(config.evict_paths),
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
    for name in ("run", "cache", "port s", "health s", "503 s", "ready s", "RSS MiB"):
        table.add_column(name, justify="right")
    for name in SHAPE_CLASSES:
        table.add_column(f"{name} first/steady ms", justify="right")
    for run in result["runs"]:
        cells = [
            str(run["run"]),
            run.get("page_cache", "warm"),
            _fmt(run["port_seconds"], "{:.2f}"),
            _fmt(run["health_seconds"], "{:.2f}"),
            _fmt(run.get("not_ready_seconds"), "{:.2f}"),
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
        f"probe (spawn → /health 200) median {_fmt(summary['health_seconds_median'], '{:.2f}')} s"
        f", max {_fmt(summary.get('health_seconds_max'), '{:.2f}')} s; "
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
