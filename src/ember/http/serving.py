"""uvicorn with ember's drain on SIGTERM.

On the first SIGTERM/SIGINT the stage becomes `draining`: `/ready` answers 503 at once, new
inference requests get 503, and in-flight requests finish; then uvicorn stops, within
`shutdown_timeout`. A second signal takes uvicorn's own (immediate) path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ember.http.app import app_state
from ember.settings import Settings

log = logging.getLogger("ember.server")

# After draining starts, keep answering (503 on /ready) at least this long, so load balancers
# see not-ready before the port closes.
_MIN_DRAIN_SECONDS = 0.5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, settings: Settings, app: FastAPI) -> None:
        super().__init__(config)
        self.settings = settings
        self.app = app
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_task = asyncio.get_event_loop().create_task(self._drain())

    async def _drain(self) -> None:
        state = app_state(self.app)
        state.engines.drain()
        log.info("draining: %d requests in flight", state.in_flight.count)
        started = time.monotonic()
        deadline = started + self.settings.shutdown_timeout
        await asyncio.sleep(min(_MIN_DRAIN_SECONDS, self.settings.shutdown_timeout))
        while state.in_flight.count > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.02)
        if state.in_flight.count:
            log.warning("shutdown timeout: %d requests still in flight", state.in_flight.count)
        log.info("drained in %.2f s; exiting", time.monotonic() - started)
        self.should_exit = True


def run(app: FastAPI, settings: Settings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
        server_header=False,
    )
    DrainingServer(config, settings=settings, app=app).run()


def run_reload(settings: Settings) -> None:
    uvicorn.run(
        "ember.http.app:app_from_env",
        factory=True,
        reload=True,
        host=settings.host,
        port=settings.port,
        log_config=None,
    )
