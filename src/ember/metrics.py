"""Every Prometheus metric ember exports, defined once. Engine and lifecycle record; http serves.

`prime()` and `prime_routes()` create every labelled series up front, so `/metrics` is complete
before the first request (TEI's is empty until then). The routes come from the HTTP layer's route
table, so this module imports nothing from `http`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("starting", "loading", "warming", "ready", "failed", "draining")
STATUSES = ("200", "401", "413", "422", "424", "429", "499", "500", "503")
TASKS = ("embed", "rerank", "classify")
PHASES = ("queue", "tokenize", "inference", "total")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

STAGE = Gauge(
    "ember_stage", "1 for the model's current stage, 0 for the others", ["model", "stage"]
)
STAGE_SECONDS = Gauge(
    "ember_stage_seconds", "Seconds the model spent in a finished stage", ["model", "stage"]
)
LOAD_SECONDS = Gauge("ember_load_seconds", "Seconds to load the model", ["model"])
WARMUP_SECONDS = Gauge("ember_warmup_seconds", "Seconds the whole warm-up took", ["model"])
WARMUP_SHAPE_SECONDS = Gauge(
    "ember_warmup_shape_seconds",
    "Seconds of the slowest warm-up round of one shape",
    ["model", "task", "rows", "seq"],
)
WARMUP_SHAPES = Gauge("ember_warmup_shapes", "Shapes warmed", ["model"])
REQUESTS = Counter(
    "ember_requests", "Requests answered, by route, task and status", ["route", "task", "status"]
)
REQUEST_LATENCY = Histogram(
    "ember_request_phase_seconds",
    "Per-request time in each phase (queue, tokenize, inference, total)",
    ["model", "phase"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_INPUTS = Gauge("ember_queue_inputs", "Inputs admitted and not yet answered", ["model"])
BATCH_ROWS = Histogram(
    "ember_batch_rows",
    "Rows per batch (after bucketing)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_TOKENS = Histogram(
    "ember_batch_padded_tokens",
    "Padded tokens per batch (rows x padded length)",
    ["model"],
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
INPUTS = Counter("ember_inputs", "Inputs processed", ["model", "task"])
FAILURES = Counter("ember_failures", "Failures by error kind", ["kind"])
ERROR_KINDS = (
    "validation",
    "too_large",
    "overloaded",
    "not_ready",
    "wrong_task",
    "unauthorized",
    "not_found",
    "backend",
    "model",
    "internal",
)


def set_stage(model: str, stage: str) -> None:
    for name in STAGES:
        STAGE.labels(model=model, stage=name).set(1 if name == stage else 0)


def prime(models: Iterable[tuple[str, str]]) -> None:
    """Create every series for these (model name, task) pairs."""
    for kind in ERROR_KINDS:
        FAILURES.labels(kind=kind)
    for model, task in models:
        LOAD_SECONDS.labels(model=model)
        WARMUP_SECONDS.labels(model=model)
        WARMUP_SHAPES.labels(model=model)
        QUEUE_INPUTS.labels(model=model)
        BATCH_ROWS.labels(model=model)
        BATCH_TOKENS.labels(model=model)
        INPUTS.labels(model=model, task=task)
        for phase in PHASES:
            REQUEST_LATENCY.labels(model=model, phase=phase)
        for stage in STAGES:
            STAGE_SECONDS.labels(model=model, stage=stage)


def prime_routes(routes: Iterable[str]) -> None:
    """Create the request series of every (route, task, status) for these inference routes."""
    for route in routes:
        for task in TASKS:
            for status in STATUSES:
                REQUESTS.labels(route=route, task=task, status=status)
