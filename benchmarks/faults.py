"""Faults and probes against real `ember serve` processes, with figures for RESULTS.md.

    .venv/bin/ember prepare                          # once: servers start from the artifact
    .venv/bin/python benchmarks/faults.py probes     # spawn -> first /health 200, median of 5
    .venv/bin/python benchmarks/faults.py faults     # the heavier fault cases, as a table

`probes`: spawns `python -m ember serve` N times and polls `/health` every 2 ms over raw
sockets from the moment of spawn: the time to the first 200, and what `/ready` says then.

`faults`: each case starts a server, applies one fault while clients send requests, and
counts what the clients got. A request is *lost* when it got anything but a 200 or a JSON 503
with Retry-After (a 500, a text/plain answer, a reset, no answer). *held* is whether the
server kept its contract (answers, exit time, memory, /ready) through the fault. The worker
cases send one request at a time (a new connection each) from the fault until `/ready` is 200
again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 25)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(port: int, *args: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*cmd, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def raw_get(port: int, path: str, timeout: float = 0.5) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one GET on a fresh connection; (0, {}) if nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
    except OSError:
        return 0, {}
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body or b"{}")
    except (IndexError, ValueError):
        return 0, {}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- probes ------------------------------------------------------------------------------------


def probe_once(args: list[str], log: Path) -> tuple[float, int, dict[str, Any]]:
    port = free_port()
    started = time.monotonic()
    proc = spawn(port, *args, log=log)
    try:
        while time.monotonic() - started < 30:
            status, _ = raw_get(port, "/health", timeout=0.2)
            if status == 200:
                seconds = time.monotonic() - started
                ready_status, ready = raw_get(port, "/ready")
                return seconds, ready_status, ready
            time.sleep(0.002)
        raise RuntimeError(f"/health never answered: {log.read_text()[-2000:]}")
    finally:
        stop(proc)


def probes(runs: int, args: list[str], logs: Path) -> None:
    times = []
    for run in range(runs):
        seconds, status, body = probe_once(args, logs / f"probe-{run}.log")
        times.append(seconds)
        print(f"run {run}: /health 200 after {seconds:.3f} s; /ready then {status} {body}")
    print(
        f"spawn -> first /health 200: median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}, {runs} runs)"
    )


# --- faults ------------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    tried: int
    held: bool
    lost: int
    note: str


async def request(
    port: int, body: bytes, *, send_body: int | None = None, path: str = "/embed"
) -> tuple[int, str]:
    """(status, content-type) of one POST on its own connection; (0, why) without an answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body[:send_body])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 60)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return 0, type(exc).__name__
    if not raw:
        return 0, "closed"
    head_raw = raw.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    kind = "application/json" if "content-type: application/json" in head_raw else "other"
    retry = "retry-after:" in head_raw
    status = int(head_raw.split()[1])
    return status, kind if status != 503 or retry else "503 without retry-after"


def bad(answers: list[tuple[int, str]]) -> int:
    """Answers outside the contract: anything but a 200 or a JSON 503 with Retry-After."""
    return sum(not (s in (200, 503) and k == "application/json") for s, k in answers)


def texts(n: int) -> bytes:
    return json.dumps({"inputs": [LONG] * n}).encode()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while raw_get(port, "/ready")[0] != 200:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("server never ready")
        time.sleep(0.05)


async def signal_under_load(
    port: int, proc: subprocess.Popen[bytes], *, n: int, per: int, sigs: list[tuple[float, int]]
) -> tuple[list[tuple[int, str]], float]:
    calls = [asyncio.ensure_future(request(port, texts(per))) for _ in range(n)]
    last = time.monotonic()
    for delay, sig in sigs:
        await asyncio.sleep(delay)
        proc.send_signal(sig)
        last = time.monotonic()
    answers = await asyncio.gather(*calls)
    await asyncio.to_thread(proc.wait, 30)
    return answers, time.monotonic() - last


def shutdown_case(
    logs: Path,
    name: str,
    timeout: float,
    *,
    n: int,
    per: int,
    sigs: list[tuple[float, int]],
    budget: float,
) -> Row:
    port = free_port()
    proc = spawn(
        port,
        "--shutdown-timeout",
        str(timeout),
        "--max-concurrent-requests",
        "100000",
        log=logs / f"{name}.log",
    )
    try:
        wait_ready(port, proc)
        answers, exited = asyncio.run(signal_under_load(port, proc, n=n, per=per, sigs=sigs))
    finally:
        stop(proc)
    lost = bad(answers)
    ok = sum(s == 200 for s, _ in answers)
    held = lost == 0 and exited <= budget and proc.returncode == 0
    return Row(
        name,
        n,
        held,
        lost,
        f"{ok} x 200, {n - ok - lost} x JSON 503; exit {exited:.2f} s after the last signal "
        f"(budget {budget:g} s)",
    )


def partial_body_case(logs: Path) -> Row:
    port = free_port()
    proc = spawn(port, "--shutdown-timeout", "1", log=logs / "partial-body.log")
    try:
        wait_ready(port, proc)

        async def scenario() -> tuple[tuple[int, str], float]:
            body = texts(1)
            held = asyncio.ensure_future(request(port, body, send_body=len(body) // 2))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answer = await held
            await asyncio.to_thread(proc.wait, 30)
            return answer, time.monotonic() - signalled

        answer, exited = asyncio.run(scenario())
    finally:
        stop(proc)
    lost = bad([answer])
    return Row(
        "SIGTERM, a client holding a partial body",
        1,
        lost == 0 and exited <= 2,
        lost,
        f"answer {answer[0]}; exit {exited:.2f} s (budget 2 s)",
    )


def abuse_case(logs: Path) -> list[Row]:
    port = free_port()
    proc = spawn(
        port,
        "--api-key",
        "k",
        "--http-header-timeout",
        "1",
        "--http-body-timeout",
        "1",
        log=logs / "abuse.log",
    )
    rows = []
    try:
        wait_ready(port, proc)
        rss0 = _rss(proc.pid)

        async def endless(piece: bytes, count: int) -> int:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /embed HTTP/1.1\r\nhost: x\r\n")
                for _ in range(count):
                    writer.write(piece)
                    await writer.drain()
            except OSError:
                pass
            try:
                raw = await asyncio.wait_for(reader.read(-1), 10)
            except (OSError, TimeoutError):
                return 0
            return int(raw.split()[1]) if raw else 0

        for name, piece, count in [
            ("an 8 MB header line", b"x-big: " + b"a" * (8 * 2**20), 1),
            ("100,000 headers", b"x-h: v\r\n" * 1000, 100),
            ("20 endless heads at once", b"a" * 65536, 200),
        ]:
            conns = 20 if name.startswith("20") else 1
            statuses = asyncio.run(_gather(endless(piece, count) for _ in range(conns)))
            grown = (_rss(proc.pid) - rss0) / 2**20
            alive = raw_get(port, "/health")[0] == 200
            rows.append(
                Row(
                    name,
                    conns,
                    alive and grown < 50 and 431 in statuses,
                    0,
                    f"answers {sorted(set(statuses))} (0: reset after the refusal); "
                    f"RSS +{grown:.0f} MB",
                )
            )
        started = time.monotonic()
        slow = asyncio.run(_gather([endless(b"x-a: b\r\n", 1)]))
        rows.append(
            Row(
                "a head that never ends (slowloris)",
                1,
                slow == [408],
                0,
                f"{slow[0]} after {time.monotonic() - started:.1f} s (timeout 1 s)",
            )
        )
    finally:
        stop(proc)
    return rows


async def _gather(calls: Any) -> list[int]:
    return list(await asyncio.gather(*calls))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker_case(logs: Path, fault: signal.Signals) -> Row:
    port = free_port()
    proc = spawn(
        port,
        "--workers",
        "2",
        "--worker-heartbeat-timeout",
        "1",
        "--shutdown-timeout",
        "1",
        log=logs / f"workers-{fault.name}.log",
    )
    try:
        wait_ready(port, proc, timeout=180)
        children = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        os.kill(children[0], fault)
        faulted = time.monotonic()

        async def load() -> tuple[list[tuple[int, str]], float]:
            answers = []
            back = 0.0
            while time.monotonic() - faulted < 60:
                answers.append(await request(port, b'{"inputs": "a short text"}'))
                status, _ = await asyncio.to_thread(raw_get, port, "/ready")
                if status == 200 and time.monotonic() - faulted > 1.5:
                    back = time.monotonic() - faulted
                    break
            return answers, back

        answers, back = asyncio.run(load())
    finally:
        stop(proc)
    lost = bad(answers)
    refused = sum(a == (503, "application/json") for a in answers)
    return Row(
        f"--workers 2, {fault.name} one worker",
        len(answers),
        back > 0,
        lost,
        f"replaced, /ready 200 again after {back:.1f} s; {refused} x JSON 503 (from the "
        f"replacement while it warms); lost: {sorted({a for a in answers if a[0] == 0})}",
    )


def faults(logs: Path) -> None:
    rows = [
        shutdown_case(
            logs,
            "SIGTERM, 128 queued, --shutdown-timeout 1",
            1,
            n=128,
            per=4,
            sigs=[(0.5, signal.SIGTERM)],
            budget=2,
        ),
        shutdown_case(
            logs,
            "SIGINT twice (finish now), 64 queued",
            30,
            n=64,
            per=4,
            sigs=[(0.5, signal.SIGINT), (0.7, signal.SIGINT)],
            budget=1,
        ),
        shutdown_case(
            logs, "SIGHUP, 8 in flight", 20, n=8, per=2, sigs=[(0.3, signal.SIGHUP)], budget=21
        ),
        partial_body_case(logs),
        *abuse_case(logs),
        worker_case(logs, signal.SIGKILL),
        worker_case(logs, signal.SIGSTOP),
    ]
    print("| fault | tried | held | requests lost | notes |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        held = "yes" if row.held else "NO"
        print(f"| {row.fault} | {row.tried} | {held} | {row.lost} | {row.note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probes", help="spawn -> first /health 200")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--logs", type=Path, default=Path("/tmp/ember-faults"))
    p.add_argument("serve_args", nargs="*", help="extra `ember serve` arguments (after --)")
    f = sub.add_parser("faults", help="the heavier fault cases, as a table")
    f.add_argument("--logs", type=Path, default=Path("/tmp/ember-faults"))
    ns = parser.parse_args(argv)
    ns.logs.mkdir(parents=True, exist_ok=True)
    if ns.command == "probes":
        probes(ns.runs, ns.serve_args, ns.logs)
    else:
        faults(ns.logs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
