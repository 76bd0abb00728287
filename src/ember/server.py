"""Run the app under uvicorn, with ember's drain on SIGTERM.

On the first SIGTERM/SIGINT the stage becomes `draining`: `/ready` answers 503 at once, new
inference requests get 503, and in-flight requests finish; then uvicorn stops, within
`shutdown_timeout`. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ember import logs
from ember.settings import Settings

log = logging.getLogger("ember.server")

# After draining starts, keep answering (503 on /ready) at least this long, so load balancers
# see not-ready before the port closes.
_MIN_DRAIN_SECONDS = 0.5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal: uvicorn's own (force) path
            return
        loop = asyncio.get_event_loop()
        self._drain_task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        from ember.http.app import app_state

        app = self.config.loaded_app
        while not isinstance(app, FastAPI) and hasattr(app, "app"):
            app = app.app
        state = app_state(app)
        state.engines.drain()
        log.info("draining: %d requests in flight", state.in_flight.count)
        started = time.monotonic()
        deadline = started + self.settings.shutdown_timeout
        await asyncio.sleep(min(_MIN_DRAIN_SECONDS, self.settings.shutdown_timeout))
        while state.in_flight.count > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, polled
            await asyncio.sleep(0.02)
        if state.in_flight.count:
            log.warning("shutdown timeout: %d requests still in flight", state.in_flight.count)
        log.info("drained in %.2f s; exiting", time.monotonic() - started)
        self.should_exit = True


def serve(settings: Settings) -> int:
    secret = settings.api_key.get_secret_value() if settings.api_key else None
    logs.setup(level=settings.log_level, json_logs=settings.json_logs, secrets=[secret or ""])
    if settings.reload:
        return _serve_reload(settings)
    from ember.http.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
        limit_concurrency=None,
        server_header=False,
    )
    server = DrainingServer(config, settings=settings)
    server.run()
    return 0


def _serve_reload(settings: Settings) -> int:
    """Under the reloader, the parent only watches files; the child builds the app (and loads
    the model) through `app_from_env`, so the model is never loaded twice."""
    for name, raw in settings.model_dump(exclude={"reload"}, exclude_defaults=True).items():
        value = raw.get_secret_value() if name == "api_key" and raw is not None else raw
        os.environ[f"EMBER_{name.upper()}"] = (
            ",".join(map(str, value)) if isinstance(value, list) else str(value)
        )
    uvicorn.run(
        "ember.http.app:app_from_env",
        factory=True,
        reload=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
    )
    return 0
