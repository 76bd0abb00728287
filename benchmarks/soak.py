"""Soak: minutes of mixed load against a running ember; errors, latency and RSS over time.

    .venv/bin/ember prepare            # first, so the server never imports torch to export:
    .venv/bin/ember serve --port 8080 &   # its RSS is then a serving process's from the start
    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8080 --server-pid $! --minutes 10

The mix, from what `/info` says the server serves: TEI `/embed` with one text and with batches
of 2..max texts, OpenAI `/v1/embeddings` with base64, `/rerank` and `/predict` when a reranker or
classifier is served. Text lengths vary from a few words to past the model's max length.
`--concurrency` virtual users run `ember bench load`'s one closed loop (ember.bench.load: one
keep-alive connection each, the next request when the previous one is answered, back-off on
429) over a mixed workload (ember.bench.workloads). Every 200 body is checked for its shape.

Per interval (`--interval`, 60 s): requests, errors by status or connection failure, latency
p50/p90/p99 and the server's RSS. At the end: a JSON document (`--out`) and a markdown summary
on stdout (RSS drift, total errors), for benchmarks/RESULTS.md. Ctrl-C ends early and still
writes both.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ember.bench.client import Endpoint, HttpConnection, make_text, parse_url
from ember.bench.load import closed_loop, latency_summary
from ember.bench.process import tree_rss_mb
from ember.bench.startup import machine_info
from ember.bench.workloads import Custom, Mixed, Request

RSS_DRIFT_LIMIT_PCT = 5.0
"""The issue's bar: RSS at the end within 5% of the start."""


@dataclass(slots=True)
class Interval:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    requests: int = 0


@dataclass(slots=True)
class Intervals:
    """The loop's sink: each answer counted in the interval it arrived in; answers after the
    deadline count in the last interval, not a stub one."""

    started: float
    seconds: float
    last_index: int
    rows: list[Interval] = field(default_factory=list)
    issued: int = 0

    def record(self, request: Request, ms: float, error: str | None) -> None:
        now = time.perf_counter()
        index = min(int((now - self.started) // self.seconds), self.last_index)
        while len(self.rows) <= index:
            self.rows.append(Interval())
        slot = self.rows[index]
        slot.requests += 1
        slot.by_kind[request.kind] += 1
        if error is None:
            slot.latencies_ms.append(ms)
        else:
            slot.errors[error] += 1


def _words(rng: random.Random, max_words: int) -> int:
    """Mostly short and medium texts, some long, a few past the max length (truncated)."""
    roll = rng.random()
    if roll < 0.5:
        return rng.randint(3, 20)
    if roll < 0.85:
        return rng.randint(20, 80)
    if roll < 0.97:
        return rng.randint(min(80, max_words), max_words)  # a short max length: up to it
    return rng.randint(max_words, max_words * 2)


def build_mix(info: dict[str, Any]) -> list[tuple[float, Custom]]:
    """The request kinds the server's models allow, with their weights."""
    limit = int(info.get("max_client_batch_size") or 32)
    models = info.get("models") or []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        by_task.setdefault(model["task"], []).append(model)
    named = len(models) > 1  # several models: every request names its own
    kinds: list[tuple[float, Custom]] = []

    def texts(rng: random.Random, n: int, max_len: int) -> list[str]:
        return [make_text(rng, _words(rng, max(max_len - 2, 8))) for _ in range(n)]

    def with_model(body: dict[str, Any], model: dict[str, Any]) -> bytes:
        if named:
            body["model"] = model["model_id"]
        return orjson.dumps(body)

    for model in by_task.get("embed", []):
        max_len = int(model.get("max_input_length") or 256)
        dim = model.get("dimension")

        def single(
            rng: random.Random, m: dict[str, Any] = model, ml: int = max_len
        ) -> tuple[bytes, int]:
            return with_model({"inputs": texts(rng, 1, ml)[0]}, m), 1

        def batch(
            rng: random.Random, m: dict[str, Any] = model, ml: int = max_len
        ) -> tuple[bytes, int]:
            n = rng.randint(2, limit)
            return with_model({"inputs": texts(rng, n, ml)}, m), n

        def openai(
            rng: random.Random, m: dict[str, Any] = model, ml: int = max_len
        ) -> tuple[bytes, int]:
            n = rng.randint(1, min(16, limit))
            body = {"input": texts(rng, n, ml), "encoding_format": "base64", "model": m["model_id"]}
            return orjson.dumps(body), n

        def vectors(body: bytes) -> int:
            parsed = orjson.loads(body)
            if not isinstance(parsed, list) or not all(parsed):
                raise ValueError("not a list of vectors")
            return len(parsed)

        def b64(body: bytes, dim: Any = dim) -> int:
            data = orjson.loads(body)["data"]
            width = len(base64.b64decode(data[0]["embedding"])) // 4
            if width == 0 or (dim is not None and width != dim):
                raise ValueError(f"vectors of width {width}, not {dim}")
            return len(data)

        kinds += [
            (0.35, Custom("embed-1", "/embed", single, vectors)),
            (0.30, Custom("embed-batch", "/embed", batch, vectors)),
            (0.20, Custom("openai-base64", "/v1/embeddings", openai, b64)),
        ]

    for model in by_task.get("rerank", []):
        max_len = int(model.get("max_input_length") or 256)

        def rerank(
            rng: random.Random, m: dict[str, Any] = model, ml: int = max_len
        ) -> tuple[bytes, int]:
            n = rng.randint(2, min(16, limit))
            query = make_text(rng, rng.randint(3, 12))
            return with_model({"query": query, "texts": texts(rng, n, ml // 2)}, m), n

        def ranked(body: bytes) -> int:
            indices = sorted(r["index"] for r in orjson.loads(body))
            if indices != list(range(len(indices))):
                raise ValueError("rerank indices are not a permutation")
            return len(indices)

        kinds.append((0.10, Custom("rerank", "/rerank", rerank, ranked)))

    for model in by_task.get("classify", []):
        max_len = int(model.get("max_input_length") or 256)

        def predict(
            rng: random.Random, m: dict[str, Any] = model, ml: int = max_len
        ) -> tuple[bytes, int]:
            n = rng.randint(3, min(8, limit))  # 2 strings would be read as one pair
            return with_model({"inputs": texts(rng, n, ml)}, m), n

        def predictions(body: bytes) -> int:
            parsed = orjson.loads(body)
            if not isinstance(parsed, list):
                raise ValueError("predict answer is not a list")
            return len(parsed)

        kinds.append((0.05, Custom("predict", "/predict", predict, predictions)))
    if not kinds:
        raise SystemExit(f"/info lists no model this script can load: {models}")
    return kinds


def rss_mb(pid: int | None) -> float | None:
    """The server's process tree RSS, MiB (workers included)."""
    rss = None if pid is None else tree_rss_mb(pid)
    return None if rss is None else round(rss, 1)


async def get_json(endpoint: Endpoint, path: str) -> Any:
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=10)
    try:
        response = await conn.request("GET", endpoint.prefix + path)
    finally:
        await conn.close()
    if response.status != 200:
        raise SystemExit(f"GET {path} answered {response.status}: {response.body[:200]!r}")
    return orjson.loads(response.body)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = parse_url(args.url)
    info = await get_json(endpoint, "/info")
    ready = await get_json(endpoint, "/ready")
    kinds = build_mix(info)
    workload = Mixed(kinds)
    rng = random.Random(args.seed)
    rss: list[dict[str, Any]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)

    started = time.perf_counter()
    deadline = started + args.minutes * 60
    rss.append({"t_s": 0.0, "rss_mb": rss_mb(args.server_pid)})
    sink = Intervals(
        started=started,
        seconds=args.interval,
        last_index=max(math.ceil(args.minutes * 60 / args.interval) - 1, 0),
    )
    intervals = sink.rows

    async def sample_rss() -> None:
        while not stop.is_set() and time.perf_counter() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), min(args.interval, deadline - time.perf_counter())
                )
            now = time.perf_counter()
            rss.append({"t_s": round(now - started, 1), "rss_mb": rss_mb(args.server_pid)})
            index = round((now - started) / args.interval) - 1  # the interval just ended
            slot = intervals[index] if 0 <= index < len(intervals) else Interval()
            print(
                f"[{now - started:7.1f} s] requests {sum(i.requests for i in intervals)}, "
                f"errors {sum(sum(i.errors.values()) for i in intervals)}, "
                f"last interval p99 {latency_summary(slot.latencies_ms)['p99']} ms, "
                f"RSS {rss[-1]['rss_mb']} MB",
                file=sys.stderr,
                flush=True,
            )

    conns = [
        HttpConnection(endpoint.host, endpoint.port, timeout=args.timeout)
        for _ in range(args.concurrency)
    ]
    users = (
        closed_loop(
            conn,
            workload,
            prefix=endpoint.prefix,
            rng=rng,
            deadline=deadline,
            max_requests=sys.maxsize,
            sink=sink,
            stop=stop,
        )
        for conn in conns
    )
    try:
        await asyncio.gather(sample_rss(), *users)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    elapsed = time.perf_counter() - started

    per_interval = []
    for index, slot in enumerate(intervals):
        per_interval.append(
            {
                "interval": index,
                "start_s": index * args.interval,
                "requests": slot.requests,
                "ok": len(slot.latencies_ms),
                "errors": dict(slot.errors),
                "latency_ms": latency_summary(slot.latencies_ms),
                "by_kind": dict(slot.by_kind),
            }
        )
    all_latencies = [ms for slot in intervals for ms in slot.latencies_ms]
    errors: Counter[str] = Counter()
    for slot in intervals:
        errors.update(slot.errors)
    start_rss, end_rss = rss[0]["rss_mb"], rss[-1]["rss_mb"]
    after_first = rss[1]["rss_mb"] if len(rss) > 2 else None
    return {
        "kind": "soak",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": endpoint.url,
        "server": {
            "version": info.get("version"),
            "models": [
                {k: m.get(k) for k in ("model_id", "task", "backend", "device", "dtype")}
                for m in info.get("models", [])
            ],
            "ready_seconds": ready.get("ready_seconds"),
            "pid": args.server_pid,
        },
        "machine": machine_info(),
        "config": {
            "minutes": args.minutes,
            "interval_s": args.interval,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "mix": {kind.kind: weight for weight, kind in kinds},
        },
        "elapsed_s": round(elapsed, 1),
        "requests": sum(s.requests for s in intervals),
        "ok": len(all_latencies),
        "errors": dict(errors),
        "req_per_s": round(len(all_latencies) / elapsed, 2) if elapsed else None,
        "latency_ms": latency_summary(all_latencies),
        "rss_mb": {
            "start": start_rss,
            "after_first_interval": after_first,
            "end": end_rss,
            "drift_pct": _drift(start_rss, end_rss),
            "drift_after_first_interval_pct": _drift(after_first, end_rss),
            "samples": rss,
        },
        "intervals": per_interval,
    }


def _drift(before: float | None, after: float | None) -> float | None:
    if not before or after is None:
        return None
    return round(100 * (after - before) / before, 2)


def markdown(doc: dict[str, Any]) -> str:
    rss = doc["rss_mb"]
    total_errors = sum(doc["errors"].values())
    models = ", ".join(f"{m['model_id']} ({m['task']})" for m in doc["server"]["models"])
    lat = doc["latency_ms"]
    drift = rss["drift_pct"]
    verdict = (
        "n/a (no --server-pid)"
        if drift is None
        else f"{drift:+.2f}% ({'within' if abs(drift) < RSS_DRIFT_LIMIT_PCT else 'OVER'} "
        f"the {RSS_DRIFT_LIMIT_PCT:g}% bar)"
    )
    lines = [
        f"### Soak: {doc['elapsed_s'] / 60:.1f} min of mixed load, "
        f"{doc['config']['concurrency']} users ({doc['created']})",
        "",
        f"- server: ember {doc['server']['version']}, {models}; "
        f"machine: {doc['machine']['cpus']} × {doc['machine']['cpu']}",
        f"- mix: {', '.join(f'{k} {w:g}' for k, w in doc['config']['mix'].items())}",
        f"- requests: {doc['requests']} ({doc['req_per_s']} ok/s); errors: {total_errors}"
        + (f" {doc['errors']}" if total_errors else ""),
        f"- latency ms over the run: p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, "
        f"max {lat['max']}",
        f"- RSS MB: start {rss['start']}, after the first interval {rss['after_first_interval']}, "
        f"end {rss['end']}; drift {verdict}; from the first interval "
        f"{_fmt_pct(rss['drift_after_first_interval_pct'])}",
        "",
        "| interval | start s | requests | errors | p50 ms | p90 ms | p99 ms |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in doc["intervals"]:
        lat = row["latency_ms"]
        errs = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "0"
        lines.append(
            f"| {row['interval']} | {row['start_s']:g} | {row['requests']} | {errs} | "
            f"{lat['p50']} | {lat['p90']} | {lat['p99']} |"
        )
    return "\n".join(lines)


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a loopback ember URL")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run [10]")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per row [60]")
    parser.add_argument("--concurrency", type=int, default=8, help="virtual users [8]")
    parser.add_argument("--server-pid", type=int, default=None, help="for RSS (psutil)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds [60]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path [benchmarks/results/soak-<UTC>.json]"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.concurrency < 1:
        parser.error("--minutes, --interval and --concurrency must be positive")
    try:
        parse_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    doc = asyncio.run(soak(args))
    out = args.out or Path("benchmarks/results") / (
        f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    print(f"\n(JSON: {out})")
    drift = doc["rss_mb"]["drift_pct"]
    failed = sum(doc["errors"].values()) > 0 or (
        drift is not None and abs(drift) >= RSS_DRIFT_LIMIT_PCT
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
