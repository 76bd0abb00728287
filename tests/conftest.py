"""Shared fixtures: the anyio backend, an in-process app with a fake or real backend, and the
tiny task models (random weights, real config and tokenizer), built once a session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ember.bench import tiny_models
from ember.bench.tiny_families import build_families
from ember.engine.registry import BackendFactory
from ember.http.app import app_state, create_app
from ember.settings import Settings
from tests.fakes import FakeFactory

FAST = {"max_input_length": 128}
"""Default settings but one: tiny-model references truncate at 128 tokens alike
(tests/integration/conftest.py `MAX_LENGTH`). Buckets stay at their defaults: pinning them
hid a warm-up that could not become ready on real rerankers (issue 13)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_stage(app: FastAPI, *stages: str, within: float = 60.0) -> str:
    engines = app_state(app).engines
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while engines.stage.value not in stages:
        if loop.time() > deadline:
            raise AssertionError(f"stage stayed {engines.stage.value}, wanted {stages}")
        await asyncio.sleep(0.01)
    return engines.stage.value


@asynccontextmanager
async def running_app(
    factory: BackendFactory | None = None, *, wait: bool = True, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client on its ASGI transport."""
    settings = Settings(**{**FAST, **overrides})
    app = create_app(settings, backend_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ember") as client:
            if wait:
                await wait_stage(app, "ready", "failed")
            yield app, client


@pytest.fixture
def fake_factory() -> FakeFactory:
    return FakeFactory()


AppMaker = Callable[..., Any]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_reranker(tiny_dir: Path) -> Path:
    return tiny_models.build_reranker(tiny_dir / "reranker")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dir: Path) -> Path:
    return tiny_models.build_classifier(tiny_dir / "classifier")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_dir: Path) -> Path:
    return tiny_models.build_embedder(tiny_dir / "embedder")


@pytest.fixture(scope="session")
def tiny_families(tiny_dir: Path) -> dict[str, Path]:
    """One tiny model folder per family of the matrix (`tiny_families.FAMILIES`), built once."""
    return build_families(tiny_dir / "families")
