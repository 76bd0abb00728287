"""`ember deploy k8s`: Kubernetes manifests whose probe windows and memory come from a measured
startup, so that nobody has to guess them.

The measurement is a startup report (`ember bench startup --json`: `runs[*].ready_seconds`,
`runs[*].health_seconds`, `runs[*].rss_mb_at_ready`) or, without one, a few `ember serve`
subprocesses started here. With T the slowest spawn-to-ready time and m the margin:

- startupProbe (/health): initialDelaySeconds + periodSeconds * failureThreshold ≥ T * m, so a
  pod that loads slowly is never killed, even if /health were starved until ready;
- livenessProbe (/health): periodSeconds * failureThreshold ≥ max(30 s, T * m): a restart only
  after /health has been silent longer than a whole startup;
- readinessProbe (/ready): every 2 s, so traffic arrives within 2 s of being warm;
- memory request = limit = max RSS at ready * m, rounded up to 64 MiB;
- terminationGracePeriodSeconds = preStop sleep + shutdown_timeout + 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.settings import Settings

Manifest = dict[str, Any]

STARTUP_PERIOD_S = 2
"""How often the startup probe asks /health: it also bounds how late readiness probing starts."""
LIVENESS_PERIOD_S = 10
READINESS_PERIOD_S = 2
"""Traffic reaches a pod at most this long after /ready first says 200."""
READINESS_FAILURES = 3
MIN_LIVENESS_WINDOW_S = 30
"""Kubernetes' own default liveness window (10 s × 3): never less tolerant than that."""
EXIT_SLACK_S = 5
"""Grace-period seconds on top of preStop + shutdown_timeout, for the process to exit."""
MEMORY_STEP_MB = 64
ANNOTATION = "ember"
"""Prefix of the annotations that record the measurement the manifests were sized from."""


class DeployError(Exception):
    """A problem with the inputs (exit status 2)."""


class MeasureError(Exception):
    """The local startup measurement failed (exit status 1)."""


@dataclass(frozen=True, kw_only=True)
class Startup:
    """The measured startup the manifests are sized from (the slowest of the runs)."""

    ready_seconds: float
    """Slowest time from process spawn to the first 200 from /ready."""
    health_seconds: float
    """Slowest time from process spawn to the first 200 from /health."""
    rss_mb: float
    """Largest resident memory at ready, in MiB."""
    runs: int
    source: str


@dataclass(frozen=True, kw_only=True)
class Options:
    name: str = "ember"
    image: str = "ember:latest"
    namespace: str | None = None
    replicas: int = 2
    max_replicas: int = 8
    margin: float = 2.0
    cpu: float = 2.0
    gpus: int = 0
    port: int = 8080
    shutdown_timeout: float = 30.0
    prestop_sleep: int = 5
    target_cpu_utilization: int = 70


@dataclass(frozen=True, kw_only=True)
class Probe:
    path: str
    initial_delay: int
    period: int
    timeout: int
    failures: int

    @property
    def window(self) -> int:
        """Seconds of consecutive failures before the kubelet acts (Kubernetes' formula)."""
        return self.initial_delay + self.period * self.failures

    def to_k8s(self) -> Manifest:
        return {
            "httpGet": {"path": self.path, "port": "http"},
            "initialDelaySeconds": self.initial_delay,
            "periodSeconds": self.period,
            "timeoutSeconds": self.timeout,
            "failureThreshold": self.failures,
            "successThreshold": 1,
        }


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Every derived number, with the formula that produced it."""

    startup: Probe
    liveness: Probe
    readiness: Probe
    memory_mb: int
    grace_seconds: int
    progress_deadline: int
    formulas: tuple[str, ...]


def plan(startup: Startup, options: Options) -> Plan:
    if options.margin < 1:
        raise DeployError(f"--margin must be at least 1, not {options.margin}")
    budget = startup.ready_seconds * options.margin
    startup_probe = Probe(
        path="/health",
        initial_delay=0,
        period=STARTUP_PERIOD_S,
        timeout=STARTUP_PERIOD_S,
        failures=max(3, math.ceil(budget / STARTUP_PERIOD_S)),
    )
    liveness = Probe(
        path="/health",
        initial_delay=0,
        period=LIVENESS_PERIOD_S,
        timeout=5,
        failures=max(3, math.ceil(max(budget, MIN_LIVENESS_WINDOW_S) / LIVENESS_PERIOD_S)),
    )
    readiness = Probe(
        path="/ready",
        initial_delay=0,
        period=READINESS_PERIOD_S,
        timeout=READINESS_PERIOD_S,
        failures=READINESS_FAILURES,
    )
    memory_mb = math.ceil(startup.rss_mb * options.margin / MEMORY_STEP_MB) * MEMORY_STEP_MB
    grace = options.prestop_sleep + math.ceil(options.shutdown_timeout) + EXIT_SLACK_S
    progress_deadline = max(600, 2 * startup_probe.window)
    t, m = f"{startup.ready_seconds:.2f}", f"{options.margin:g}"
    formulas = (
        f"T = slowest spawn-to-ready = {t} s over {startup.runs} run(s) ({startup.source}); "
        f"m = margin = {m}",
        f"startupProbe /health: {startup_probe.initial_delay} + {startup_probe.period} × "
        f"{startup_probe.failures} = {startup_probe.window} s ≥ T × m = {budget:.1f} s",
        f"livenessProbe /health: {liveness.period} × {liveness.failures} = {liveness.window} s "
        f"≥ max({MIN_LIVENESS_WINDOW_S}, T × m); it starts once the startup probe passes",
        f"readinessProbe /ready: every {readiness.period} s; out of rotation after "
        f"{readiness.failures} failures",
        f"memory = ceil(max RSS at ready {startup.rss_mb:.0f} MiB × m / {MEMORY_STEP_MB}) × "
        f"{MEMORY_STEP_MB} = {memory_mb} MiB",
        f"terminationGracePeriodSeconds = preStop {options.prestop_sleep} + shutdown_timeout "
        f"{options.shutdown_timeout:g} + {EXIT_SLACK_S} = {grace} s",
    )
    return Plan(
        startup=startup_probe,
        liveness=liveness,
        readiness=readiness,
        memory_mb=memory_mb,
        grace_seconds=grace,
        progress_deadline=progress_deadline,
        formulas=formulas,
    )


# --- startup reports ---------------------------------------------------------------------


def _positive(run: object, key: str, index: int, *, required: bool = True) -> float | None:
    if not isinstance(run, dict):
        raise DeployError(f"runs[{index}] is not an object")
    value = run.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DeployError(f"runs[{index}].{key} is missing or not a number (got {value!r})")
    if not math.isfinite(value) or value <= 0:
        raise DeployError(f"runs[{index}].{key} must be a positive number (got {value!r})")
    return float(value)


def parse_report(data: object, *, source: str) -> Startup:
    """The slowest run of an `ember bench startup` report; DeployError says what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise DeployError(f"{source}: not a startup report: expected an object with a 'runs' list")
    runs: list[object] = data["runs"]
    failed = data.get("failed_runs") or []
    if failed:
        # Sizing from the runs that did get ready would hide the slowest start of all.
        raise DeployError(
            f"{source}: {len(failed)} run(s) never became ready (failed_runs); fix the cause "
            "or measure again"
        )
    if not runs:
        raise DeployError(f"{source}: the report has no runs")
    ready: list[float] = []
    health: list[float] = []
    rss: list[float] = []
    for index, run in enumerate(runs):
        try:
            ready_s = _positive(run, "ready_seconds", index)
            health_s = _positive(run, "health_seconds", index, required=False)
            rss_mb = _positive(run, "rss_mb_at_ready", index)
        except DeployError as exc:
            raise DeployError(f"{source}: {exc}") from None
        assert ready_s is not None and rss_mb is not None
        ready.append(ready_s)
        health.append(health_s if health_s is not None else ready_s)
        rss.append(rss_mb)
    return Startup(
        ready_seconds=max(ready),
        health_seconds=max(health),
        rss_mb=max(rss),
        runs=len(runs),
        source=source,
    )


def load_report(path: Path) -> Startup:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"cannot read the startup report {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path}: not JSON ({exc})") from None
    return parse_report(data, source=path.name)


# --- measuring locally --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, from /proc (Linux)."""
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    if total_kb == 0:
        raise MeasureError("cannot read the server's memory from /proc (Linux only)")
    return total_kb / 1024


def measure_once(serve_args: Sequence[str], *, timeout: float) -> tuple[float, float, float]:
    """Spawn `ember serve`; return (seconds to /health 200, seconds to /ready 200, RSS MiB)."""
    port = _free_port()
    command = [sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen([*command, *serve_args], stdout=log, stderr=subprocess.STDOUT)
        health_s: float | None = None
        try:
            while True:
                elapsed = time.monotonic() - started
                if process.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise MeasureError(
                        f"`ember serve` exited ({process.returncode}) before ready:\n{tail}"
                    )
                if elapsed > timeout:
                    raise MeasureError(f"`ember serve` was not ready after {timeout:g} s")
                if health_s is None and _status(base + "/health") == 200:
                    health_s = time.monotonic() - started
                if health_s is not None and _status(base + "/ready") == 200:
                    return health_s, time.monotonic() - started, _rss_mb(process.pid)
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def measure(runs: int, serve_args: Sequence[str], *, timeout: float) -> Startup:
    results = []
    for index in range(runs):
        health_s, ready_s, rss = measure_once(serve_args, timeout=timeout)
        print(
            f"ember deploy: run {index + 1}/{runs}: health {health_s:.2f} s, "
            f"ready {ready_s:.2f} s, RSS {rss:.0f} MiB",
            file=sys.stderr,
        )
        results.append((health_s, ready_s, rss))
    return Startup(
        health_seconds=max(r[0] for r in results),
        ready_seconds=max(r[1] for r in results),
        rss_mb=max(r[2] for r in results),
        runs=runs,
        source="measured here: " + " ".join(["ember serve", *serve_args]),
    )


# --- manifests ----------------------------------------------------------------------------


def _labels(options: Options) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ember", "app.kubernetes.io/instance": options.name}


def _metadata(options: Options, **extra: Any) -> Manifest:
    metadata: Manifest = {"name": options.name}
    if options.namespace:
        metadata["namespace"] = options.namespace
    metadata["labels"] = {**_labels(options), "app.kubernetes.io/component": "server"}
    metadata.update(extra)
    return metadata


def _cpu(cores: float) -> str | int:
    return int(cores) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def startup_annotations(startup: Startup, options: Options, plan_: Plan) -> dict[str, str]:
    """What the manifests were sized from, kept on the Deployment so anyone can re-derive it."""
    return {
        f"{ANNOTATION}/startup-ready-seconds": f"{startup.ready_seconds:.3f}",
        f"{ANNOTATION}/startup-health-seconds": f"{startup.health_seconds:.3f}",
        f"{ANNOTATION}/startup-rss-mb": f"{startup.rss_mb:.1f}",
        f"{ANNOTATION}/startup-runs": str(startup.runs),
        f"{ANNOTATION}/startup-source": startup.source,
        f"{ANNOTATION}/margin": f"{options.margin:g}",
        f"{ANNOTATION}/sizing": " | ".join(plan_.formulas[1:]),
    }


def deployment(startup: Startup, options: Options, plan_: Plan) -> Manifest:
    memory = f"{plan_.memory_mb}Mi"
    resources: Manifest = {
        # requests == limits: Guaranteed QoS, so neither is the pod evicted first under node
        # memory pressure nor are its cores shared when the static CPU manager is on.
        "requests": {"cpu": _cpu(options.cpu), "memory": memory},
        "limits": {"cpu": _cpu(options.cpu), "memory": memory},
    }
    env: list[Manifest] = [
        {"name": "EMBER_HOST", "value": "0.0.0.0"},
        {"name": "EMBER_PORT", "value": str(options.port)},
        {"name": "EMBER_SHUTDOWN_TIMEOUT", "value": f"{options.shutdown_timeout:g}"},
        # The kubelet restarts a failed load (with back-off) and shows it as CrashLoopBackOff.
        {"name": "EMBER_EXIT_ON_FAILURE", "value": "true"},
        {"name": "EMBER_JSON_LOGS", "value": "true"},
        # The CPU quota, not the node's core count (which the affinity mask shows in a pod).
        {
            "name": "EMBER_THREADS",
            "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}},
        },
        {
            "name": "EMBER_API_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": options.name, "key": "api-key", "optional": True}
            },
        },
    ]
    if options.gpus:
        resources["limits"]["nvidia.com/gpu"] = options.gpus
        env.insert(2, {"name": "EMBER_DEVICE", "value": "cuda"})
    container: Manifest = {
        "name": "ember",
        "image": options.image,
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": options.port, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "startupProbe": plan_.startup.to_k8s(),
        "livenessProbe": plan_.liveness.to_k8s(),
        "readinessProbe": plan_.readiness.to_k8s(),
        # Keep serving while the endpoint removal reaches every proxy, then SIGTERM drains.
        "lifecycle": {"preStop": {"sleep": {"seconds": options.prestop_sleep}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec: Manifest = {
        "terminationGracePeriodSeconds": plan_.grace_seconds,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _labels(options)},
            }
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, annotations=startup_annotations(startup, options, plan_)),
        # No `replicas`: the HorizontalPodAutoscaler owns it (minReplicas), and `kubectl apply`
        # would otherwise reset it on every apply.
        "spec": {
            "selector": {"matchLabels": _labels(options)},
            "progressDeadlineSeconds": plan_.progress_deadline,
            # A new pod takes traffic only when warm; never drop below the serving capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**_labels(options), "app.kubernetes.io/component": "server"},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(options.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(options: Options) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options),
        "spec": {
            "type": "ClusterIP",
            "selector": _labels(options),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def hpa(options: Options) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": options.target_cpu_utilization,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
    }


def pdb(options: Options) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(options),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": _labels(options)},
            # A pod that is not ready (still loading, or failed) may always be evicted: a drain
            # must not wait on it.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def kustomization(options: Options, files: Sequence[str]) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    if options.namespace:
        manifest["namespace"] = options.namespace
    return manifest


def render(startup: Startup, options: Options) -> dict[str, tuple[Manifest, tuple[str, ...]]]:
    """File name → (manifest, header comment lines), in apply order."""
    plan_ = plan(startup, options)
    if options.replicas < 1 or options.max_replicas < options.replicas:
        raise DeployError("need 1 ≤ --replicas ≤ --max-replicas")
    generated = "Generated by `ember deploy k8s`; re-render rather than edit by hand."
    files: dict[str, tuple[Manifest, tuple[str, ...]]] = {
        "deployment.yaml": (deployment(startup, options, plan_), (generated, *plan_.formulas)),
        "service.yaml": (service(options), (generated,)),
        "hpa.yaml": (hpa(options), (generated,)),
        "pdb.yaml": (pdb(options), (generated,)),
    }
    files["kustomization.yaml"] = (kustomization(options, list(files)), (generated,))
    return files


# --- YAML ---------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*(:[A-Za-z0-9_./-]+)*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
# Characters YAML does not allow raw (or reads as line breaks) that json.dumps leaves raw.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to a manifest")
        # YAML 1.1 (PyYAML) reads an exponent as a float only after a dot: 1.0e+20, not 1e+20.
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + ("" if "." in mantissa or not e else ".0") + e + exponent
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
            return value
        # A double-quoted YAML scalar accepts every JSON string escape.
        quoted = json.dumps(value, ensure_ascii=False)
        return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest")


def _block(value: object, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        lines: list[str] = []
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, dict | list) and item:
                lines.append(head)
                lines += _block(item, indent + (0 if isinstance(item, list) else 2))
            else:
                lines.append(f"{head} {_flow(item)}")
        return lines
    if isinstance(value, list):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = _block(item, indent + 2)
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_flow(item)}")
        return lines
    return [pad + _scalar(value)]


def _flow(value: object) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(value: object, *, comments: Sequence[str] = ()) -> str:
    """Block-style YAML for JSON-like data, readable by any YAML 1.1 or 1.2 parser."""
    head = [f"# {line}".rstrip() for comment in comments for line in comment.splitlines()]
    return "\n".join([*head, *_block(value, 0)]) + "\n"


# --- CLI ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember deploy",
        description="Render deployment manifests sized from a measured startup.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = sub.add_parser(
        "k8s",
        help="Kubernetes Deployment, Service, HPA and PDB (kustomize base)",
        description="Render Kubernetes manifests whose probe windows and memory come from a "
        "startup report, or from `ember serve` started here RUNS times (arguments after `--` "
        "go to `ember serve`).",
    )
    defaults = Options()
    shutdown_default = Settings.model_fields["shutdown_timeout"].default
    k8s.add_argument(
        "--startup-report",
        type=Path,
        metavar="FILE",
        help="JSON from `ember bench startup`; without it, measure here",
    )
    k8s.add_argument(
        "--runs",
        type=int,
        default=3,
        help="local measurement: times to start `ember serve` (default 3)",
    )
    k8s.add_argument(
        "--measure-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="local measurement: give up on a run after this long (default 600)",
    )
    k8s.add_argument(
        "--margin",
        type=float,
        default=defaults.margin,
        help="multiplier on the measured ready time and memory (default 2.0)",
    )
    k8s.add_argument(
        "--replicas",
        type=int,
        default=defaults.replicas,
        help="minimum replicas (the autoscaler's floor; default 2)",
    )
    k8s.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="the autoscaler's ceiling (default 4 × --replicas)",
    )
    k8s.add_argument(
        "--image", default=defaults.image, help="container image (default ember:latest)"
    )
    k8s.add_argument("--namespace", default=None, help="namespace for every object")
    k8s.add_argument("--name", default=defaults.name, help="name of every object (default ember)")
    k8s.add_argument(
        "--cpu",
        type=float,
        default=defaults.cpu,
        help="CPU cores requested and allowed; sets EMBER_THREADS (default 2)",
    )
    k8s.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per pod (default 0)")
    k8s.add_argument(
        "--port", type=int, default=defaults.port, help="container port (default 8080)"
    )
    k8s.add_argument(
        "--shutdown-timeout",
        type=float,
        default=shutdown_default,
        help=f"EMBER_SHUTDOWN_TIMEOUT in the pod (default {shutdown_default:g})",
    )
    k8s.add_argument(
        "--prestop-sleep",
        type=int,
        default=defaults.prestop_sleep,
        help="seconds to keep serving after deletion, before SIGTERM (default 5)",
    )
    k8s.add_argument(
        "--target-cpu-utilization",
        type=int,
        default=defaults.target_cpu_utilization,
        help="the autoscaler's CPU target in percent of the request (default 70)",
    )
    k8s.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write one file per object and a kustomization.yaml here; "
        "default: one multi-document YAML on stdout",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    serve_args: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, serve_args = args_list[:cut], args_list[cut + 1 :]
    args = build_parser().parse_args(args_list)
    try:
        if args.margin < 1 or not math.isfinite(args.margin):
            raise DeployError(f"--margin must be at least 1, not {args.margin}")
        if args.cpu <= 0 or args.gpus < 0 or args.runs < 1 or args.prestop_sleep < 0:
            raise DeployError("--cpu and --runs must be positive; --gpus and --prestop-sleep ≥ 0")
        options = Options(
            name=args.name,
            image=args.image,
            namespace=args.namespace,
            replicas=args.replicas,
            max_replicas=args.max_replicas or 4 * args.replicas,
            margin=args.margin,
            cpu=args.cpu,
            gpus=args.gpus,
            port=args.port,
            shutdown_timeout=args.shutdown_timeout,
            prestop_sleep=args.prestop_sleep,
            target_cpu_utilization=args.target_cpu_utilization,
        )
        if args.startup_report is not None:
            if serve_args:
                raise DeployError("arguments after `--` are for a local measurement only")
            startup = load_report(args.startup_report)
        else:
            startup = measure(args.runs, serve_args, timeout=args.measure_timeout)
        files = render(startup, options)
    except DeployError as exc:
        print(f"ember deploy: {exc}", file=sys.stderr)
        return 2
    except MeasureError as exc:
        print(f"ember deploy: startup measurement failed: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(
            "---\n".join(
                to_yaml(manifest, comments=comments)
                for name, (manifest, comments) in files.items()
                if name != "kustomization.yaml"
            )
        )
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (manifest, comments) in files.items():
        (args.out / name).write_text(to_yaml(manifest, comments=comments), encoding="utf-8")
    print(f"ember deploy: wrote {', '.join(files)} to {args.out}", file=sys.stderr)
    for line in plan(startup, options).formulas:
        print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
