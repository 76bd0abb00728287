"""What the server process owns, and the typed dependencies routes reach it through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request

from ember.backends.base import FloatArray
from ember.engine.registry import Engines
from ember.http.middleware import InFlight
from ember.http.table import Route
from ember.settings import Settings

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


class AppState:
    """The engines, settings and in-flight count of one app (typed, not `app.state` attributes)."""

    def __init__(self, *, settings: Settings, engines: Engines) -> None:
        self.settings = settings
        self.engines = engines
        self.in_flight = InFlight()
        self.load_task: asyncio.Task[None] | None = None
        self.calibration: dict[str, FloatArray] = {}
        """Raw vectors of the quantisation corpus, per model name (`quantize.CALIBRATION`)."""


def app_state(app: FastAPI) -> AppState:
    state = app.state.ember
    assert isinstance(state, AppState)
    return state


# `async def`: FastAPI runs a plain `def` dependency on its thread pool, a hop per request.
async def _engines(request: Request) -> Engines:
    return app_state(request.app).engines


async def _settings(request: Request) -> Settings:
    return app_state(request.app).settings


async def _state(request: Request) -> AppState:
    return app_state(request.app)


EnginesDep = Annotated[Engines, Depends(_engines)]
"""The served models, for a route parameter."""
SettingsDep = Annotated[Settings, Depends(_settings)]
"""The server's settings, for a route parameter."""
StateDep = Annotated[AppState, Depends(_state)]
"""The whole app state (engines, settings, caches), for a route parameter."""


def on(router: APIRouter, route: Route, **options: Any) -> Callable[[_Handler], _Handler]:
    """Register a handler for `route` with the path and methods of the route table (one
    registration per method, so each has its own OpenAPI operation id)."""

    def register(handler: _Handler) -> _Handler:
        for method in route.methods:
            router.api_route(route.path, methods=[method], **options)(handler)
        return handler

    return register
