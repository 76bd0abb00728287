"""Faults and probes against real `ember serve` processes, with figures for RESULTS.md.

    .venv/bin/ember prepare                          # once: servers start from the artifact
    .venv/bin/python benchmarks/faults.py probes     # spawn -> first /health 200, median of 5
    .venv/bin/python benchmarks/faults.py faults     # the heavier fault cases, as a table

`probes`: spawns `python -m ember serve` N times and polls `/health` every 2 ms over raw
sockets from the moment of spawn: the time to the first 200, and what `/ready` says then.

`faults`: each case starts a server, applies one fault while clients send requests, and
counts what the clients got. A request is *lost* when it got anything but a 200 or a JSON 503
with Retry-After (a 500, a text/plain answer, a reset, no answer). *held* is whether the
server kept its contract (answers, exit time, /ready) through the fault.
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
from collections.abc import Awaitable, Callable
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


def faults(logs: Path) -> None:
    raise NotImplementedError


if __name__ == "__main__":
    raise SystemExit(main())
