"""Probe latency while the server is saturated by max-size inputs (issue 15, items 4 and 5).

Starts `ember serve` (built-in model, defaults), keeps N clients each posting a body just under
the payload limit to `/embed` or `/tokenize`, and meanwhile times `GET /health` every 20 ms on
its own connection. Prints the probe latency percentiles and the status counts.

    .venv/bin/python benchmarks/probe_under_load.py --seconds 20 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from ember.bench.process import free_port, render_cmd, running


async def load(url: str, args: argparse.Namespace) -> tuple[list[float], dict[str, int]]:
    text = ("lorem ipsum dolor sit amet " * (args.chars // 27 + 1))[: args.chars]
    statuses: dict[str, int] = {}
    probes: list[float] = []
    stop = time.monotonic() + args.seconds

    async def heavy(path: str) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while time.monotonic() < stop:
                r = await client.post(url + path, json={"inputs": text})
                key = f"{path} {r.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                if r.status_code == 429 and args.honor_retry_after:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.sleep(1.0)  # let the load build up
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await client.get(url + "/health")
                probes.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
                await asyncio.sleep(0.02)

    paths = ["/embed", "/tokenize"] * args.clients
    await asyncio.gather(probe(), *(heavy(p) for p in paths[: args.clients]))
    return probes, statuses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--chars", type=int, default=1_900_000)
    ap.add_argument(
        "--honor-retry-after",
        action="store_true",
        help="clients wait Retry-After on a 429 (without: they resend at once, an abusive load)",
    )
    args = ap.parse_args()
    port = free_port()
    cmd = ".venv/bin/python -m ember serve --host 127.0.0.1 --port {port}"
    log = Path(tempfile.mkdtemp()) / "server.log"
    with running(render_cmd(cmd, port), port=port, log_path=log, ready_timeout=120):
        probes, statuses = asyncio.run(load(f"http://127.0.0.1:{port}", args))
    q = statistics.quantiles(probes, n=100)
    result = {
        "clients": args.clients,
        "chars": args.chars,
        "honor_retry_after": args.honor_retry_after,
        "probes": len(probes),
        "probe_ms": {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(max(probes), 2)},
        "statuses": statuses,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
