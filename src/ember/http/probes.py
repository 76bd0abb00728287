"""Probes and operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ember.http import schemas as s
from ember.http import shaping, table
from ember.http.deps import EnginesDep, on
from ember.http.shaping import JSON

router = APIRouter()


@on(router, table.HEALTH, response_model=s.Health, tags=["probes"])
@on(router, table.ROOT_HEALTH, response_model=s.Health, tags=["probes"])
async def health(engines: EnginesDep) -> Response:
    """Liveness: 200 whenever the process answers, with the stage it is in."""
    body: s.Health = {"status": "alive", "stage": engines.stage.value}
    return JSON(body)


@on(
    router,
    table.READY,
    response_model=s.Readiness,
    responses={503: {"model": s.Readiness}},
    tags=["probes"],
)
async def ready(engines: EnginesDep) -> Response:
    """Readiness: 200 only when every model is loaded and warm."""
    body = engines.snapshot()
    if engines.ready:
        body["ready_seconds"] = engines.ready_seconds
        body["warmup"] = [m.warmup_report.to_dict() for m in engines.models if m.warmup_report]
        reports = [m.warmup_report for m in engines.models]
        load = [m.load_seconds or 0.0 for m in engines.models]
        warm = [r.total_seconds if r else 0.0 for r in reports]
        # The HTTP part of warm-up runs once for all models; each report carries its total.
        http = max((r.http_seconds for r in reports if r), default=0.0)
        for entry, load_s, warm_s in zip(body["models"], load, warm, strict=True):
            entry.update(shaping.phase_seconds(load=load_s, warmup=warm_s))
        body |= shaping.phase_seconds(load=sum(load), warmup=sum(warm) + http)
        return JSON(body)
    return JSON(body, status_code=503, headers={"Retry-After": "1"})


@on(
    router,
    table.METRICS,
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics_route() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
