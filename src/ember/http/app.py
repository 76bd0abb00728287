"""`create_app(settings)`: the FastAPI app, its lifespan and the HTTP part of warm-up.

Nothing is built at import time. The lifespan starts loading in the background and returns at
once, so the port opens while the model loads: `/health` answers "alive" from the first moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message

from ember import __version__, metrics
from ember.engine.registry import BackendFactory, Engines
from ember.http import cohere, errors, openai, probes, sagemaker, table, tei
from ember.http.deps import AppState, app_state
from ember.http.middleware import EmberMiddleware
from ember.settings import Settings

__all__ = ["AppState", "app_state", "create_app", "warm_http"]

log = logging.getLogger("ember.http")


def create_app(
    settings: Settings,
    *,
    engines: Engines | None = None,
    backend_factory: BackendFactory | None = None,
) -> FastAPI:
    engines = engines or Engines(settings, backend_factory=backend_factory)
    state = AppState(settings=settings, engines=engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engines.http_warm_hook = lambda e: warm_http(app, e)
        state.load_task = asyncio.create_task(_load(state), name="load")
        try:
            yield
        finally:
            engines.drain()
            if state.load_task is not None and not state.load_task.done():
                state.load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.load_task
            await engines.stop()

    app = FastAPI(
        title="ember",
        version=__version__,
        summary="Text embeddings, rerank and classification; warm before ready.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    for router in (probes.router, tei.router, openai.router, cohere.router, sagemaker.router):
        app.include_router(router)
    errors.install(app)
    metrics.prime_routes(table.route_tasks().keys())

    app.add_middleware(
        EmberMiddleware,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        metrics_public=settings.metrics_public,
        payload_limit=settings.payload_limit,
        in_flight=state.in_flight,
    )
    if settings.cors_origins:
        # Added last, so outermost: a browser's preflight carries no API key and must be
        # answered before the key check (issue 15 item 8).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.state.ember = state
    return app


async def _load(state: AppState) -> None:
    await state.engines.start()
    if state.engines.lifecycle.error and state.settings.exit_on_failure:
        log.error("exiting: --exit-on-failure is set and loading failed")
        # Flush logs, then leave with status 1 so a supervisor restarts the process.
        logging.shutdown()
        os._exit(1)


async def warm_http(app: ASGIApp, engines: Engines) -> float:
    """Send each route's warm-up bodies (the route table's) for every model through the ASGI app
    itself, so routing, validation and JSON encoding are warm too; the engine already ran every
    planned shape, so small payloads suffice. Returns the seconds spent."""
    started = time.perf_counter()
    for model in engines.models:
        calls = table.warm_calls(
            model.task, model.spec.name, sparse=model.spec.splade, per_token=model.per_token
        )
        # Sent together: each still runs its route's parsing, validation and encoding, while the
        # batcher packs their inputs into a batch or two (one after the other, the ~12 calls
        # of an embedding model cost ~0.25 s of ready time on 2 CPU cores).
        statuses = await asyncio.gather(*(_asgi_post(app, p, b, engines) for p, b in calls))
        for (path, _), status in zip(calls, statuses, strict=True):
            if status != 200:
                raise RuntimeError(f"HTTP warm-up {path} for {model.spec.name} answered {status}")
    return time.perf_counter() - started


async def _asgi_post(app: ASGIApp, path: str, body: dict[str, Any], engines: Engines) -> int:
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    key = engines.settings.api_key
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.get_secret_value().encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


def app_from_env() -> FastAPI:
    """The factory the auto-reloader's worker calls: settings from `EMBER_*` variables."""
    settings = Settings()
    if "EMBER_WARMUP" not in os.environ:
        settings.warmup = False
    return create_app(settings)
