"""The probes `ember deploy k8s` renders, run as the kubelet runs them against real servers.

`Kubelet` applies a container's startupProbe, livenessProbe and readinessProbe exactly as
written in the manifest (initialDelaySeconds, periodSeconds, timeoutSeconds, failureThreshold,
successThreshold) to an `ember serve` subprocess: each probe ticks on its own from container
start; liveness and readiness are skipped until the startup probe has passed; failureThreshold
consecutive failures kill the container (startup, liveness) or take it out of rotation
(readiness); successThreshold consecutive successes put it in. It records every answer, so the
tests can say what a real cluster would have done.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ember import deploy
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

PROBES = ("startup", "liveness", "readiness")
LOADING = {"starting", "loading", "warming"}

# Small buckets keep warm-up short. The torch backend needs no `ember prepare` step, and probe
# behaviour does not depend on the backend.
FAST = (
    "--backend", "torch", "--seq-buckets", "16,64", "--max-batch-tokens", "512",
    "--max-batch-requests", "8", "--max-input-length", "128",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    name: str
    path: str
    initial_delay: float
    period: float
    timeout: float
    failures: int
    successes: int

    @classmethod
    def from_k8s(cls, name: str, probe: dict[str, Any]) -> ProbeSpec:
        # Kubernetes' defaults, for fields a manifest leaves out.
        return cls(
            name=name,
            path=probe["httpGet"]["path"],
            initial_delay=probe.get("initialDelaySeconds", 0),
            period=probe.get("periodSeconds", 10),
            timeout=probe.get("timeoutSeconds", 1),
            failures=probe.get("failureThreshold", 3),
            successes=probe.get("successThreshold", 1),
        )


@dataclass(frozen=True)
class Answer:
    seconds: float
    """Since container start."""
    probe: str
    ok: bool
    status: int
    body: dict[str, Any]


@dataclass
class Kubelet:
    container: dict[str, Any]
    server: Server
    answers: list[Answer] = field(default_factory=list)
    started: bool = False
    """The startup probe has passed."""
    ready: bool = False
    ready_body: dict[str, Any] | None = None
    """The /ready answer that first put the pod in rotation."""
    killed_by: str | None = None
    exit_code: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def of(self, probe: str) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.probe == probe]

    def _ask(self, spec: ProbeSpec) -> Answer:
        status, body = 0, {}
        try:
            url = self.server.url + spec.path
            with urllib.request.urlopen(url, timeout=spec.timeout) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read() or b"{}")
        except OSError as exc:  # refused, reset or timed out: a failure, as for the kubelet
            body = {"error": repr(exc)}
        seconds = time.monotonic() - self.server.started
        return Answer(seconds, spec.name, 200 <= status < 400, status, body)

    def _worker(self, spec: ProbeSpec) -> None:
        failures = successes = 0
        tick = spec.initial_delay
        while True:
            if self._stop.wait(max(0.0, self.server.started + tick - time.monotonic())):
                return
            tick += spec.period
            if spec.name != "startup" and not self.started:
                continue
            answer = self._ask(spec)
            with self._lock:
                if self._stop.is_set():
                    return
                self.answers.append(answer)
                failures, successes = (0, successes + 1) if answer.ok else (failures + 1, 0)
                if spec.name == "startup" and answer.ok:
                    self.started = True
                    return
                if spec.name in ("startup", "liveness") and failures >= spec.failures:
                    self.killed_by = spec.name
                    self._stop.set()
                elif spec.name == "readiness":
                    if not self.ready and successes >= spec.successes:
                        self.ready, self.ready_body = True, answer.body
                    elif self.ready and failures >= spec.failures:
                        self.ready = False

    def run(self, *, until: Callable[[Kubelet], bool], timeout: float) -> Kubelet:
        specs = [ProbeSpec.from_k8s(p, self.container[f"{p}Probe"]) for p in PROBES]
        workers = [threading.Thread(target=self._worker, args=(s,), daemon=True) for s in specs]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            if (code := self.server.proc.poll()) is not None:
                self.exit_code = code
                break
            with self._lock:
                done = until(self)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self._stop.set()
        for worker in workers:
            worker.join(timeout=10)
        return self


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet would set it (host and port are the test's)."""
    cpu = str(container["resources"]["requests"]["cpu"])
    cores = math.ceil(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))
    env: dict[str, str] = {}
    for item in container["env"]:
        if item["name"] in ("EMBER_HOST", "EMBER_PORT"):
            continue
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "resourceFieldRef" in item.get("valueFrom", {}):
            assert item["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
            env[item["name"]] = str(cores)
    return env


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ember.bench.tiny_models import build_embedder

    return build_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture(scope="module")
def deployment(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`ember deploy k8s` sized from one local start of the server the tests run."""
    pytest.importorskip("yaml")
    from ember.deploy.kustomize import build

    out = tmp_path_factory.mktemp("k8s")
    code = deploy.main(
        ["k8s", "--runs", "1", "--cold-runs", "0", "--out", str(out),
         "--", "--model", str(tiny_model), *FAST]
    )  # fmt: skip
    assert code == 0
    (manifest,) = [doc for doc in build(out) if doc["kind"] == "Deployment"]
    return manifest


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_a_loading_server_gets_traffic_only_when_warm_and_is_never_killed(
    deployment: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    container = _container(deployment)
    startup = ProbeSpec.from_k8s("startup", container["startupProbe"])
    window = startup.initial_delay + startup.period * startup.failures
    server = Server(
        "--model", str(tiny_model), *FAST, env=_pod_env(container), log=tmp_path / "log"
    )
    try:
        kubelet = Kubelet(container, server).run(until=lambda k: k.ready, timeout=window + 30)
        assert kubelet.killed_by is None, server.logs()
        assert kubelet.exit_code is None, server.logs()
        assert kubelet.ready, f"never ready: {kubelet.answers[-3:]} {server.logs()}"
        assert kubelet.started
        # No traffic before warm: every /ready answer before the first 200 named a loading stage.
        readiness = kubelet.of("readiness")
        assert all(a.status == 503 and a.body["status"] in LOADING for a in readiness[:-1])
        assert kubelet.ready_body is not None and kubelet.ready_body["status"] == "ready"
        assert kubelet.ready_body["warmup"], kubelet.ready_body
        # ...and traffic, once routed, is answered.
        request = urllib.request.Request(
            server.url + "/embed",
            data=json.dumps({"inputs": ["routed after ready"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        # Pod deletion: the preStop sleep, during which ember still serves, then SIGTERM; ember
        # must be gone within what is left of terminationGracePeriodSeconds.
        pod = deployment["spec"]["template"]["spec"]
        prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        time.sleep(prestop)
        with urllib.request.urlopen(server.url + "/ready", timeout=2) as response:
            assert response.status == 200
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=pod["terminationGracePeriodSeconds"] - prestop)
        except subprocess.TimeoutExpired:
            pytest.fail(f"not gone within the grace period: {server.logs()}")
        assert code == 0, server.logs()
    finally:
        server.stop()


def test_a_failed_load_stays_not_ready_and_liveness_never_kills_it(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    container = _container(deployment)
    server = Server(
        "--model", "/nonexistent", *FAST, "--no-exit-on-failure",
        env=_pod_env(container), log=tmp_path / "log",
    )  # fmt: skip
    try:
        kubelet = Kubelet(container, server).run(
            until=lambda k: len(k.of("liveness")) >= 2, timeout=40
        )
        assert kubelet.killed_by is None, server.logs()
        assert kubelet.exit_code is None, server.logs()
        assert len(kubelet.of("liveness")) >= 2
        assert all(a.ok and a.body["status"] == "alive" for a in kubelet.of("liveness"))
        readiness = kubelet.of("readiness")
        assert readiness and not any(a.ok for a in readiness)
        assert not kubelet.ready and kubelet.ready_body is None
        last = readiness[-1].body
        assert last["status"] == "failed" and "/nonexistent" in json.dumps(last), last
    finally:
        server.stop()


def test_with_the_manifests_exit_on_failure_a_failed_load_exits_for_a_restart(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    container = _container(deployment)
    env = _pod_env(container)
    assert env["EMBER_EXIT_ON_FAILURE"] == "true"
    server = Server("--model", "/nonexistent", *FAST, env=env, log=tmp_path / "log")
    try:
        kubelet = Kubelet(container, server).run(until=lambda k: False, timeout=30)
        # The process leaves by itself (restartPolicy Always: the kubelet starts it again, with
        # back-off); no probe had to kill it and it never took traffic.
        assert kubelet.exit_code not in (None, 0), server.logs()
        assert kubelet.killed_by is None
        assert not kubelet.ready
        assert not any(a.ok for a in kubelet.of("readiness"))
    finally:
        server.stop()


def test_probes_answer_from_the_first_moment_and_through_the_hand_over(
    ember_cache: Path, tmp_path: Path
) -> None:
    """`/health` answers before the web stack has even imported (uvicorn has logged nothing),
    `/ready` says the stage, and from the first answer to ready no probe is ever refused,
    across the hand-over of the listening socket to uvicorn."""
    server = Server(env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / "log")
    answers: list[tuple[int, str]] = []
    try:
        while not answers or answers[-1][0] != 200:
            if time.monotonic() - server.started > 30 or server.proc.poll() is not None:
                pytest.fail(f"/health never answered: {server.logs()}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=1) as response:
                    answers.append((response.status, server.logs()))
            except OSError:
                time.sleep(0.005)
        first_log = answers[-1][1]
        assert "uvicorn" not in first_log and "Application startup" not in first_log, first_log
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(server.url + "/ready", timeout=1)
        assert not_ready.value.code == 503
        assert json.loads(not_ready.value.read())["status"] in LOADING
        statuses = []
        while True:
            try:
                with urllib.request.urlopen(server.url + "/ready", timeout=2) as response:
                    statuses.append(response.status)
                    break
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError as exc:
                pytest.fail(f"refused or reset after the first answer: {exc!r} {server.logs()}")
            assert time.monotonic() - server.started < 60, server.logs()
        assert set(statuses) <= {200, 503}
    finally:
        server.stop()
