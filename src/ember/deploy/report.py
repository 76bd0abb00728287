"""The measurement a deployment is sized from: an `ember bench startup` report, read or made here.

Only the slowest run matters (a window must cover the worst start seen, not the typical one),
so a report with failed runs is refused: sizing from the runs that did get ready would hide the
slowest start of all.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    cold_runs: int = 0
    """How many of the runs started with a cold page cache (a new node's bad day)."""


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
        raise DeployError(
            f"{source}: {len(failed)} run(s) never became ready (failed_runs); fix the cause "
            "or measure again"
        )
    if not runs:
        raise DeployError(f"{source}: the report has no runs")
    ready: list[float] = []
    health: list[float] = []
    rss: list[float] = []
    cold = 0
    for index, run in enumerate(runs):
        try:
            ready_s = _positive(run, "ready_seconds", index)
            health_s = _positive(run, "health_seconds", index, required=False)
            rss_mb = _positive(run, "rss_mb_at_ready", index)
        except DeployError as exc:
            raise DeployError(f"{source}: {exc}") from None
        assert ready_s is not None and rss_mb is not None  # required=True
        ready.append(ready_s)
        health.append(health_s if health_s is not None else ready_s)
        rss.append(rss_mb)
        cold += isinstance(run, dict) and run.get("page_cache") == "cold"
    return Startup(
        ready_seconds=max(ready),
        health_seconds=max(health),
        rss_mb=max(rss),
        runs=len(runs),
        source=source,
        cold_runs=cold,
    )


def load_report(path: Path) -> Startup:
    """parse_report of a JSON file; DeployError if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"cannot read the startup report {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path}: not JSON ({exc})") from None
    return parse_report(data, source=path.name)


def measure(runs: int, serve_args: Sequence[str], *, timeout: float, cold_runs: int = 1) -> Startup:
    """`ember bench startup` of `ember serve SERVE_ARGS` here, `runs` times, the first
    `cold_runs` of them with the serving files dropped from the page cache."""
    from ember.bench.process import render_cmd
    from ember.bench.startup import DEFAULT_CMD, StartupConfig, run_startup, serving_files

    cmd = " ".join([DEFAULT_CMD, *map(shlex.quote, serve_args)])
    config = StartupConfig(
        cmd=cmd,
        runs=runs,
        label="deploy",
        ready_timeout=timeout,
        shape_classes=False,  # the probe windows need the start, not the first requests
        cold_runs=min(cold_runs, runs),
        evict_paths=serving_files(render_cmd(cmd, 0)) if cold_runs else (),
    )
    with tempfile.TemporaryDirectory(prefix="ember-deploy-") as logs:
        doc: dict[str, Any] = run_startup(config, out_dir=Path(logs))
    for run in doc["runs"]:
        print(
            f"ember deploy: run {run['run'] + 1}/{runs} ({run['page_cache']} page cache): "
            f"health {run['health_seconds']:.2f} s, ready {run['ready_seconds']:.2f} s, "
            f"RSS {run['rss_mb_at_ready']:.0f} MiB",
            file=sys.stderr,
        )
    if doc["failed_runs"]:
        failure = doc["failed_runs"][0]
        raise MeasureError(f"`ember serve` {failure['error']}:\n{failure['log_tail']}")
    source = "measured here: " + " ".join(["ember serve", *serve_args])
    return parse_report(doc, source=source)
