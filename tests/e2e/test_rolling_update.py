"""A rolling update behind a real nginx: two ember replicas replaced one at a time, as a
Kubernetes Deployment with maxSurge 1 / maxUnavailable 0 does, under load: zero failed requests.

nginx stands in for the Service and its readiness-gated endpoints. Each step: start the new
replica, wait for its `/ready` 200, add it to the upstream (reload), SIGTERM the old one while it
is still in the upstream (as the kubelet does, racing the endpoint removal), wait for it to
exit, then drop it from the upstream.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import Server, free_port, get

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        NGINX is None,
        reason="nginx is not installed (apt-get install nginx-light; .ci/run installs it)",
    ),
]

TEXTS = [
    "a rolling update must not drop a single request",
    "the quick brown fox jumps over the lazy dog",
    "readiness gates traffic; draining answers 503 and finishes what it has",
    "short",
    "embeddings for retrieval augmented generation " * 6,
    "nginx retries a refused connection on the next upstream",
]
CLIENTS = 3


def _conf(*, listen: int, upstreams: list[int], generation: int, root: Path) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstreams)
    user = "user root;" if os.geteuid() == 0 else ""  # workers write the temp files below
    return f"""
{user}
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    log_format upstreams '$status|$upstream_status|$upstream_addr';
    access_log {root}/access.log upstreams;
    upstream ember {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location = /__generation {{ return 200 "{generation}"; }}
        location / {{
            proxy_pass http://ember;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            # What a real load balancer with readiness does: a draining replica's 503 (or its
            # closed port, once it has exited) sends the request to another replica. POST
            # /embed is safe to repeat, so non-idempotent retries are allowed.
            proxy_next_upstream error timeout http_503 non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    """One POST on a fresh connection (no client keep-alive races during reloads)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Nginx:
    """nginx in the foreground, its config, pid and logs in `root`; `route` rewrites and
    reloads, then waits until the new workers answer."""

    def __init__(self, root: Path, upstreams: list[int]) -> None:
        assert NGINX is not None
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = root / "nginx.conf"
        self.generation = 1
        self.conf.write_text(_conf(listen=self.port, upstreams=upstreams, generation=1, root=root))
        self._cmd = [NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c", str(self.conf)]
        self._output = (root / "nginx.out").open("wb")
        self.proc = subprocess.Popen(self._cmd, stdout=self._output, stderr=subprocess.STDOUT)
        self._wait_generation()

    def route(self, upstreams: list[int]) -> None:
        self.generation += 1
        self.conf.write_text(
            _conf(listen=self.port, upstreams=upstreams, generation=self.generation, root=self.root)
        )
        subprocess.run([*self._cmd, "-s", "reload"], check=True, capture_output=True, timeout=10)
        self._wait_generation()

    def _wait_generation(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/__generation", timeout=1) as r:
                    if r.read().decode() == str(self.generation):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.errors()}")
            time.sleep(0.05)
        raise AssertionError(f"nginx never served generation {self.generation}: {self.errors()}")

    def errors(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._output.close()


class Load:
    """CLIENTS threads POSTing /embed through nginx until stopped; each answer is checked
    against the reference vectors."""

    def __init__(self, url: str, reference: np.ndarray) -> None:
        self.url = url
        self.reference = reference
        self.statuses: Counter[int | str] = Counter()
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(seed,), daemon=True)
            for seed in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            picked = rng.sample(range(len(TEXTS)), rng.randint(1, 4))
            try:
                status, body = post(
                    self.url + "/embed", {"inputs": [TEXTS[i] for i in picked]}, timeout=30
                )
            except Exception as exc:  # a failed request, whatever the reason
                with self._lock:
                    self.statuses[type(exc).__name__] += 1
                continue
            problem = None
            if status == 200:
                got = np.asarray(body, dtype=np.float32)
                want = self.reference[picked]
                if got.shape != want.shape or (np.sum(got * want, axis=1) < 0.9999).any():
                    problem = f"wrong vectors for {picked}"
            with self._lock:
                self.statuses[status] += 1
                if problem:
                    self.wrong.append(problem)


def test_rolling_update_behind_nginx_loses_no_request(ember_cache: Path, tmp_path: Path) -> None:
    env = {"EMBER_CACHE_DIR": str(ember_cache)}
    servers: list[Server] = []
    nginx: Nginx | None = None

    def replica(name: str) -> Server:
        servers.append(Server(env=env, log=tmp_path / f"{name}.log"))
        return servers[-1]

    try:
        live = [replica("a"), replica("b")]
        for srv in live:
            srv.wait_ready()
        status, reference = post(live[0].url + "/embed", {"inputs": TEXTS})
        assert status == 200
        nginx = Nginx(tmp_path, [s.port for s in live])
        with Load(nginx.url, np.asarray(reference, dtype=np.float32)) as load:
            time.sleep(1.0)
            for name in ("c", "d"):
                old, new = live[0], replica(name)
                new.wait_ready()
                live = [*live[1:], new]
                nginx.route([old.port, *(s.port for s in live)])
                time.sleep(0.5)  # the new replica takes its share
                old.proc.send_signal(signal.SIGTERM)
                assert old.proc.wait(timeout=30) == 0, old.logs()
                nginx.route([s.port for s in live])
            served_before_end = load.total
            time.sleep(1.0)
        assert load.total > served_before_end > 0
        assert set(load.statuses) == {200}, f"failed requests: {dict(load.statuses)}"
        assert not load.wrong, load.wrong[:5]
        for srv in live:
            assert get(srv.url + "/ready")[0] == 200
        proxied = [
            line.split("|")
            for line in (tmp_path / "access.log").read_text().splitlines()
            if not line.endswith("|-")
        ]
        retried = [upstream for _, upstream, _ in proxied if "," in upstream]
        by_replica = Counter(addrs.rsplit(":", 1)[1] for _, _, addrs in proxied)
        print(
            f"\nrolling update: {load.total} requests through nginx, all 200 with correct vectors;"
            f" {len(retried)} retried on another replica (503 while draining or refused);"
            f" answered per replica port: {dict(by_replica)}"
        )
        assert all(by_replica.get(str(s.port)) for s in live), by_replica
        assert "[emerg]" not in nginx.errors()
    finally:
        if nginx is not None:
            nginx.stop()
        for srv in servers:
            srv.stop()
