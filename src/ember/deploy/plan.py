"""The numbers: probe windows, memory and grace period from a measured startup, each with the
formula that produced it (the patch's header prints them).

With T the slowest spawn-to-ready time over all measured runs (one of them, by default, with a
cold page cache) and m the safety factor:

- startupProbe (/health): period * failures ≥ max(T * m, MIN_STARTUP_WINDOW_S). A startup
  probe only holds the other probes back until it first succeeds, so a generous window costs
  nothing on a good day, while a short one restart-loops pods on a bad one (a busy node, a cold
  disk): hence the floor;
- livenessProbe (/health): period * failures ≥ max(T * m, MIN_LIVENESS_WINDOW_S): a restart
  only after /health has been silent longer than a whole startup;
- readinessProbe (/ready): every 2 s, so traffic arrives within 2 s of being warm;
- memory request = limit = max RSS at ready * m, rounded up to 64 MiB;
- terminationGracePeriodSeconds = preStop sleep + shutdown timeout + EXIT_SLACK_S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ember.deploy.report import DeployError, Startup

STARTUP_PERIOD_S = 2
"""How often the startup probe asks /health: it also bounds how late readiness probing starts."""
MIN_STARTUP_WINDOW_S = 60
"""The startup window's floor: a 2-core VM measured ready in 3 s and, minutes later under load,
took 6.5 s (issue 15); a pod that slow must not be killed."""
LIVENESS_PERIOD_S = 10
READINESS_PERIOD_S = 2
"""Traffic reaches a pod at most this long after /ready first says 200."""
READINESS_FAILURES = 3
MIN_LIVENESS_WINDOW_S = 30
"""Kubernetes' own default liveness window (10 s × 3): never less tolerant than that."""
EXIT_SLACK_S = 5
"""Grace-period seconds on top of preStop + shutdown timeout: the process exits within the
timeout + 1 s whatever clients do (DESIGN.md "Shutdown"), so 4 s are left for a slow node."""
MEMORY_STEP_MB = 64


@dataclass(frozen=True, kw_only=True)
class Options:
    """What the operator chooses (the rest of the Deployment is the base's YAML)."""

    image: str = "ember:latest"
    namespace: str | None = None
    replicas: int = 2
    max_replicas: int = 8
    margin: float = 2.0
    """The safety factor m on the measured ready time and memory."""
    cpu: float = 2.0
    gpus: int = 0
    shutdown_timeout: float = 30.0
    prestop_sleep: int = 5


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

    def to_k8s(self) -> dict[str, Any]:
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
    """The numbers for `startup` under `options`; DeployError for a margin below 1."""
    if not options.margin >= 1 or not math.isfinite(options.margin):
        raise DeployError(f"--margin must be at least 1, not {options.margin}")
    budget = startup.ready_seconds * options.margin
    startup_probe = Probe(
        path="/health",
        initial_delay=0,
        period=STARTUP_PERIOD_S,
        timeout=STARTUP_PERIOD_S,
        failures=max(3, math.ceil(max(budget, MIN_STARTUP_WINDOW_S) / STARTUP_PERIOD_S)),
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
    t, m = f"{startup.ready_seconds:.2f}", f"{options.margin:g}"
    cold = f", {startup.cold_runs} with a cold page cache" if startup.cold_runs else ""
    formulas = (
        f"T = slowest spawn-to-ready = {t} s over {startup.runs} run(s){cold} "
        f"({startup.source}); m = safety factor = {m}",
        f"startupProbe /health: {startup_probe.initial_delay} + {startup_probe.period} × "
        f"{startup_probe.failures} = {startup_probe.window} s ≥ max(T × m = {budget:.1f} s, "
        f"floor {MIN_STARTUP_WINDOW_S} s)",
        f"livenessProbe /health: {liveness.period} × {liveness.failures} = {liveness.window} s "
        f"≥ max({MIN_LIVENESS_WINDOW_S}, T × m); it starts once the startup probe passes",
        f"readinessProbe /ready: every {readiness.period} s; out of rotation after "
        f"{readiness.failures} failures",
        f"memory = ceil(max RSS at ready {startup.rss_mb:.0f} MiB × m / {MEMORY_STEP_MB}) × "
        f"{MEMORY_STEP_MB} = {memory_mb} MiB",
        f"terminationGracePeriodSeconds = preStop {options.prestop_sleep} + shutdown_timeout "
        f"{options.shutdown_timeout:g} + exit margin {EXIT_SLACK_S} = {grace} s",
    )
    return Plan(
        startup=startup_probe,
        liveness=liveness,
        readiness=readiness,
        memory_mb=memory_mb,
        grace_seconds=grace,
        progress_deadline=max(600, 2 * startup_probe.window),
        formulas=formulas,
    )
