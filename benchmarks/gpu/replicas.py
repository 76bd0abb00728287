"""Measurement prototype: N full ember replicas (each its own model, CUDA context and graphs)
on one port through SO_REUSEPORT, to see whether one process is what limits throughput.

    python benchmarks/gpu/replicas.py --workers 4 --port 8080 -- --model DIR [ember serve flags]

Prints `ALL READY <seconds>` once every replica's `/ready` would say 200 (each replica writes a
file when its engines are ready), then serves until SIGTERM/SIGINT, which it passes on. Not the
product: `/ready` of one replica here says nothing about the others.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def worker(port: int, ready_file: Path, ember_args: list[str]) -> None:
    from ember import logs
    from ember.cli import build_parser, settings_from
    from ember.engine.registry import Engines

    namespace = build_parser().parse_args(["serve", *ember_args])
    settings = settings_from(namespace)
    settings.port = port
    logs.setup(level=settings.log_level, json_logs=False, secrets=[])
    engines = Engines(settings)
    engines.preload()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, port))
    sock.listen(2048)
    sock.set_inheritable(True)

    import uvicorn

    from ember.http.app import create_app
    from ember.http.serving import DrainingServer

    app = create_app(settings, engines=engines)

    def watch() -> None:
        while not engines.ready:
            time.sleep(0.005)
        ready_file.write_text("ready")

    threading.Thread(target=watch, daemon=True).start()
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", server_header=False
    )
    DrainingServer(config, settings=settings, app=app).run(sockets=[sock])


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--worker-ready-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv[:split])
    ember_args = argv[split + 1 :]
    if args.worker_ready_file:
        worker(args.port, Path(args.worker_ready_file), ember_args)
        return
    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="ember-replicas-"))
    files = [folder / f"w{i}" for i in range(args.workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--port",
                str(args.port),
                "--worker-ready-file",
                str(f),
                "--",
                *ember_args,
            ]
        )
        for f in files
    ]

    def stop(*_: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not all(f.exists() for f in files):
        if any(p.poll() is not None for p in procs):
            print("a replica exited before ready", flush=True)
            stop()
        time.sleep(0.01)
    print(f"ALL READY {time.perf_counter() - t0:.3f}", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
