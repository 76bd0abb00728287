"""Overload against a real `ember serve`: a burst of 10x the queue bound, arriving at once, gets
only 200s and 429s (with Retry-After); memory stays bounded; full speed comes back at once."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember.bench.client import HttpConnection, Response, make_text
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

BOUND = 64
"""--max-concurrent-requests: inputs admitted at once, past which the server answers 429."""
PER_REQUEST = 8
BURST = 10 * BOUND // PER_REQUEST
"""80 requests of 8 inputs: 640 inputs, 10x the bound, sent at once."""
BURSTS = 3
RSS_GROWTH_LIMIT_MB = 100
RECOVERY = 0.7
"""Throughput after the bursts, as a share of before: the machine is shared, so not 1.0."""


def _body(rng: random.Random) -> bytes:
    return orjson.dumps({"inputs": [make_text(rng, 12) for _ in range(PER_REQUEST)]})


async def _throughput(port: int, seconds: float, rng: random.Random, users: int = 4) -> float:
    """Closed loop: `users` keep-alive connections, each sending when answered → requests/s."""
    conns = [HttpConnection("127.0.0.1", port, timeout=30) for _ in range(users)]
    for conn in conns:  # connect and warm each connection outside the measured window
        assert (await conn.request("POST", "/embed", _body(rng))).status == 200
    done = 0
    deadline = time.perf_counter() + seconds

    async def user(conn: HttpConnection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await conn.request("POST", "/embed", _body(rng))
            assert response.status == 200, response.body[:200]
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return done / elapsed


async def _burst(port: int, rng: random.Random) -> list[Response]:
    """BURST requests on connections opened beforehand, written in the same loop iteration."""
    conns = [HttpConnection("127.0.0.1", port, timeout=60) for _ in range(BURST)]
    await asyncio.gather(*(c.connect() for c in conns))
    bodies = [_body(rng) for _ in conns]
    try:
        return await asyncio.gather(
            *(c.request("POST", "/embed", b) for c, b in zip(conns, bodies, strict=True))
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def _queued_inputs(port: int) -> float:
    conn = HttpConnection("127.0.0.1", port, timeout=10)
    response = await conn.request("GET", "/metrics")
    await conn.close()
    for family in text_string_to_metric_families(response.body.decode()):
        if family.name == "ember_queue_inputs":
            return sum(s.value for s in family.samples)
    raise AssertionError("ember_queue_inputs is not exported")


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def test_a_burst_of_ten_times_the_bound_gets_200_or_429_and_the_server_recovers(
    ember_cache: Path, tmp_path: Path
) -> None:
    srv = Server(
        "--max-concurrent-requests",
        str(BOUND),
        env={"EMBER_CACHE_DIR": str(ember_cache)},
        log=tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        asyncio.run(_overload(srv))
    finally:
        assert srv.stop() == 0, srv.logs()


async def _overload(srv: Server) -> None:
    rng = random.Random(8)
    before = await _throughput(srv.port, 3.0, rng)
    rss_before = _rss_mb(srv.proc.pid)

    statuses: dict[int, int] = {}
    for _ in range(BURSTS):
        for response in await _burst(srv.port, rng):
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200:
                assert len(orjson.loads(response.body)) == PER_REQUEST
            elif response.status == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert orjson.loads(response.body)["error_type"] == "overloaded"
    rss_after = _rss_mb(srv.proc.pid)
    assert await _queued_inputs(srv.port) == 0

    # Recovery: up to five short runs, stopping at the first that reaches the bound. A server
    # left degraded (a stuck thread, a queue that never drains) fails all five; one noisy
    # stretch on a shared 2-core machine (seen once: 19.7 vs 47.9 req/s while a benchmark ran
    # beside the suite) does not decide it.
    after = 0.0
    for _ in range(5):
        after = max(after, await _throughput(srv.port, 3.0, rng))
        if after >= RECOVERY * before:
            break
    print(
        f"\noverload: {BURSTS} bursts of {BURST}x{PER_REQUEST} inputs (bound {BOUND}): {statuses}; "
        f"RSS {rss_before:.1f} → {rss_after:.1f} MB ({rss_after - rss_before:+.1f} MB); "
        f"throughput {before:.1f} → {after:.1f} req/s ({after / before:.0%})"
    )
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.get(200) and statuses.get(429), statuses
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB
    assert after >= RECOVERY * before, (before, after)
