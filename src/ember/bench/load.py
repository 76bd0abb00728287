"""`ember bench load`: closed-loop load at several concurrencies against a loopback server.

Each of `concurrency` virtual users holds one keep-alive connection and sends its workload's
next request (`bench.workloads`: embed, rerank, classify, a mix) when the previous answer
arrives; after a 429 it backs off (`backoff_seconds`) instead of retrying at once. A level
lasts `warmup` seconds (not counted) and then `duration` seconds or `max_requests` requests,
whichever comes first, on fresh connections; requests in flight at the deadline are awaited and
counted. Every request carries fresh texts, so no cache can help.

CPU figures are percent of one core (200 = both cores of a 2-core machine), from cpu_times
deltas over the measured window: the server's process tree, this client process, the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ember.bench.client import DEFAULT_EMBED_PATHS, Api, Endpoint, HttpConnection, HttpError
from ember.bench.workloads import Embed, Request, Workload, check


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) of ascending values, linearly interpolated (numpy's
    default); ValueError if empty."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/max of latencies in ms; all None when there are none."""
    if not latencies_ms:
        return dict.fromkeys(("p50", "p90", "p99", "mean", "max"))
    ordered = sorted(latencies_ms)
    return {
        "p50": round(percentile(ordered, 50), 3),
        "p90": round(percentile(ordered, 90), 3),
        "p99": round(percentile(ordered, 99), 3),
        "mean": round(sum(ordered) / len(ordered), 3),
        "max": round(ordered[-1], 3),
    }


def parse_concurrency(text: str) -> list[int]:
    """'1,8,32' → [1, 8, 32]; ValueError unless every item is a positive integer."""
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"concurrency must be positive integers, got {text!r}")
    return levels


class CpuMeter:
    """CPU seconds (user + system) of a process tree, this process and the machine."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def server_times(self) -> dict[int, float]:
        """pid → CPU seconds for the server and its descendants now (empty without a pid)."""
        if self.server_pid is None:
            return {}
        import psutil

        try:
            root = psutil.Process(self.server_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        times: dict[int, float] = {}
        for proc in procs:
            try:
                cpu = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            times[proc.pid] = cpu.user + cpu.system
        return times

    @staticmethod
    def machine_busy() -> float:
        """Non-idle CPU seconds of the whole machine since boot, all cores added."""
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def tree_cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds a process tree spent between two snapshots; processes born in between
    count from zero, processes that died in between are lost."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


BACKOFF_FIRST_S = 0.05
"""A user's sleep after its first 429 in a row; it doubles with each further 429, up to the
server's Retry-After (or BACKOFF_MAX_S without one). A hot retry loop would take the cores from
the very server that said it is overloaded."""
BACKOFF_MAX_S = 1.0


@dataclass(slots=True)
class Tally:
    """What the virtual users of one level observed."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    embeddings: int = 0
    """Items answered (embeddings, rerank scores, predictions) by successful requests."""
    issued: int = 0

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    def record(self, request: Request, ms: float, error: str | None) -> None:
        """One answered request: its latency if it succeeded, its error key if not."""
        if error is None:
            self.latencies_ms.append(ms)
            self.embeddings += request.expect
        else:
            self.error(error)


class Sink(Protocol):
    """Where the loop counts requests: one level's Tally, or a soak's time intervals."""

    issued: int

    def record(self, request: Request, ms: float, error: str | None) -> None: ...


def backoff_seconds(consecutive_429: int, retry_after: str | None) -> float:
    """Seconds a user sleeps after its n-th 429 in a row (n ≥ 1): exponential from
    BACKOFF_FIRST_S, capped by the server's Retry-After seconds (or BACKOFF_MAX_S)."""
    cap = BACKOFF_MAX_S
    if retry_after is not None:
        # An HTTP date (rare for 429) keeps the default cap.
        with contextlib.suppress(ValueError):
            cap = max(0.0, float(retry_after))
    return min(cap, BACKOFF_FIRST_S * 2.0 ** (consecutive_429 - 1))


async def closed_loop(
    conn: HttpConnection,
    workload: Workload,
    *,
    prefix: str,
    rng: random.Random,
    deadline: float,
    max_requests: int,
    sink: Sink,
    stop: asyncio.Event | None = None,
) -> None:
    """One virtual user: send the workload's next request when the previous answer arrives,
    until `deadline`, `max_requests` issued over all users sharing `sink`, or `stop`."""
    consecutive_429 = 0
    while (
        time.perf_counter() < deadline
        and sink.issued < max_requests
        and not (stop is not None and stop.is_set())
    ):
        sink.issued += 1
        request = workload.request(rng)
        start = time.perf_counter()
        try:
            response = await conn.request("POST", prefix + request.path, request.body)
        except HttpError as exc:
            sink.record(request, (time.perf_counter() - start) * 1000, exc.kind)
            continue
        ms = (time.perf_counter() - start) * 1000
        if response.status == 200:
            consecutive_429 = 0
            sink.record(request, ms, None if check(request, response.body) else "bad_body")
            continue
        sink.record(request, ms, str(response.status))
        if response.status == 429:
            consecutive_429 += 1
            await asyncio.sleep(
                backoff_seconds(consecutive_429, response.headers.get("retry-after"))
            )


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One `ember bench load` invocation (several concurrency levels, one workload).

    Without `workload`, it is `batch` texts of `words` words to `api`'s embeddings route.
    """

    endpoint: Endpoint
    api: Api = "tei"
    path: str | None = None
    model: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    duration: float = 10.0
    warmup: float = 1.0
    max_requests: int = 100_000
    batch: int = 1
    words: int = 40
    server_pid: int | None = None
    timeout: float = 60.0
    label: str = "server"
    seed: int = 0
    workload: Workload | None = None

    @property
    def embed_path(self) -> str:
        return self.path or DEFAULT_EMBED_PATHS[self.api]

    def the_workload(self) -> Workload:
        if self.workload is not None:
            return self.workload
        return Embed(
            api=self.api, batch=self.batch, words=self.words, model=self.model, path=self.path
        )


async def run_level(config: LoadConfig, concurrency: int, rng: random.Random) -> dict[str, Any]:
    """One concurrency level → its figures (see module doc for units)."""
    meter = CpuMeter(config.server_pid)
    workload = config.the_workload()
    conns = [
        HttpConnection(config.endpoint.host, config.endpoint.port, timeout=config.timeout)
        for _ in range(concurrency)
    ]

    async def phase(seconds: float, max_requests: int) -> Tally:
        tally = Tally()
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                closed_loop(
                    conn,
                    workload,
                    prefix=config.endpoint.prefix,
                    rng=rng,
                    deadline=deadline,
                    max_requests=max_requests,
                    sink=tally,
                )
                for conn in conns
            )
        )
        return tally

    try:
        await asyncio.gather(*(conn.connect() for conn in conns))
        if config.warmup > 0:
            await phase(config.warmup, config.max_requests)
            # Fresh connections for the measured window: a user that finished its warm-up early
            # sat idle while the others finished theirs (seconds at c=32), past uvicorn's 5 s
            # keep-alive, and its next request would meet a closed socket.
            await asyncio.gather(*(conn.connect() for conn in conns))
        connects0 = sum(conn.connects for conn in conns)
        server0, machine0 = meter.server_times(), meter.machine_busy()
        client0, wall0 = time.process_time(), time.perf_counter()
        tally = await phase(config.duration, config.max_requests)
        wall = time.perf_counter() - wall0
        client_cpu = time.process_time() - client0
        server_cpu = tree_cpu_delta(server0, meter.server_times())
        machine_cpu = meter.machine_busy() - machine0
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    ok = len(tally.latencies_ms)
    return {
        "concurrency": concurrency,
        "batch": config.batch,
        "requests": tally.issued,
        "ok": ok,
        "errors": tally.errors,
        "elapsed_s": round(wall, 3),
        "req_per_s": round(ok / wall, 2),
        "emb_per_s": round(tally.embeddings / wall, 2),
        "latency_ms": latency_summary(tally.latencies_ms),
        "server_cpu_pct": round(100 * server_cpu / wall, 1) if config.server_pid else None,
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "client_cpu_us_per_req": round(1e6 * client_cpu / tally.issued, 1)
        if tally.issued
        else None,
        "machine_cpu_pct": round(100 * machine_cpu / wall, 1),
        # Anything else on the machine in the window (another job, the kernel): the noise.
        "other_cpu_pct": round(100 * (machine_cpu - server_cpu - client_cpu) / wall, 1)
        if config.server_pid
        else None,
        "reconnects": sum(conn.connects for conn in conns) - connects0,
    }


def _loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run_load(
    config: LoadConfig, *, on_level: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Every concurrency level in order → the result document; `on_level` sees each as it ends."""
    from ember.bench.startup import machine_info

    factory, loop_name = _loop_factory()
    rng = random.Random(config.seed)
    levels: list[dict[str, Any]] = []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    with asyncio.Runner(loop_factory=factory) as runner:
        for concurrency in config.concurrency:
            level = runner.run(run_level(config, concurrency, rng))
            levels.append(level)
            if on_level is not None:
                on_level(level)
    doc = asdict(config)
    doc.pop("endpoint")
    doc.update(
        workload=config.the_workload().describe(),
        kind="load",
        url=config.endpoint.url,
        path=config.embed_path,
        concurrency=list(config.concurrency),
        client_loop=loop_name,
        created=started,
        machine=machine,
        levels=levels,
    )
    return doc


def print_load(result: Mapping[str, Any]) -> None:
    """A rich table: one row per concurrency level."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"load: {result['label']}  {result['url']}{result['path']}  "
        f"batch {result['batch']} × {result['words']} words"
    )
    for name in (
        "conc",
        "req/s",
        "emb/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "server CPU%",
        "client CPU%",
        "client µs/req",
        "machine CPU%",
    ):
        table.add_column(name, justify="right")
    for level in result["levels"]:
        lat = level["latency_ms"]
        errors = ", ".join(f"{k}:{v}" for k, v in level["errors"].items()) or "0"
        table.add_row(
            str(level["concurrency"]),
            f"{level['req_per_s']:.1f}",
            f"{level['emb_per_s']:.1f}",
            *(_fmt(lat[key]) for key in ("p50", "p90", "p99")),
            errors,
            _fmt(level["server_cpu_pct"]),
            _fmt(level["client_cpu_pct"]),
            _fmt(level["client_cpu_us_per_req"]),
            _fmt(level["machine_cpu_pct"]),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def find_listener_pid(port: int) -> int | None:
    """The pid listening on TCP `port`, if psutil may see it (root, or our own process)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            pid: int | None = conn.pid
            return pid
    return None


def write_json(doc: Mapping[str, Any], path: Path) -> None:
    """Pretty JSON (orjson, 2-space indent), parent folders created."""
    import orjson

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
