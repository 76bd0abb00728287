"""Faults: broken model folders, a failing warm-up, clients that leave mid-request, and request
bodies that name files. Each leaves the process alive, the probes honest and the queue empty.

Covered elsewhere, not repeated here: a missing model folder and a failing backend factory
(test_lifecycle.py), a model folder without weights (test_multi_model.py), every kind of damaged
or mismatched ONNX artifact at the backend (tests/unit/backends/test_artifact.py; here only what
the probes say), an exception inside one batch (test_embed_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from ember.backends.artifact import MODEL_FILE, ensure_artifact
from ember.backends.base import Batch, FloatArray
from ember.http.app import app_state, create_app
from ember.models import ModelSpec, builtin_path, inspect_model
from ember.settings import Settings
from tests.conftest import FAST, running_app, wait_stage
from tests.e2e.conftest import free_port
from tests.fakes import FakeBackend, FakeFactory

pytestmark = pytest.mark.anyio

CPU: dict[str, Any] = {"device": "cpu", "threads": 1}


# --- broken model folders ----------------------------------------------------------------------


def _garble_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 64)


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _drop_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage-weights": (_garble_weights, "weights"),
    "truncated-weights": (_truncate_weights, "weights"),
    "missing-tokenizer": (_drop_tokenizer, "tokenizer.json"),
}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("harm", BROKEN.values(), ids=BROKEN.keys())
async def test_a_broken_model_folder_fails_readiness_naming_it(
    harm: tuple[Callable[[Path], None], str],
    backend: str,
    tiny_embedder: Path,
    tmp_path: Path,
) -> None:
    damage, culprit = harm
    folder = tmp_path / "broken-model"
    shutil.copytree(tiny_embedder, folder)
    damage(folder)
    settings = {**CPU, "backend": backend, "cache_dir": tmp_path / "cache"}
    async with running_app(None, model=[str(folder)], **settings) as (_app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        error = body["error"]
        assert str(folder) in error and culprit in error, error
        assert "Traceback" not in error and 'File "' not in error, error
        assert len(error.splitlines()) == 1, error
        health = await client.get("/health")
        assert (health.status_code, health.json()["stage"]) == (200, "failed")
        embed = await client.post("/embed", json={"inputs": "x"})
        assert embed.status_code == 503
        assert embed.json()["error_type"] == "not_ready"


@pytest.fixture(scope="module")
def tiny_artifact(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedder prepared once (ONNX export, a few seconds)."""
    settings = Settings(cache_dir=tmp_path_factory.mktemp("fault-cache"), threads=1)
    artifact, _ = ensure_artifact(inspect_model(str(tiny_embedder)), settings)
    return artifact


def _garble_middle(model: Path) -> None:
    """Same size, different bytes: only the manifest's hash can tell. Bytes are inverted, not
    zeroed: a graph written from the weights can hold zeros there already."""
    data = bytearray(model.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    model.write_bytes(bytes(data))


ARTIFACT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbled-onnx": lambda folder: _garble_middle(folder / MODEL_FILE),
    "truncated-onnx": lambda folder: (folder / MODEL_FILE).write_bytes(
        (folder / MODEL_FILE).read_bytes()[:4096]
    ),
}


@pytest.mark.parametrize("damage", ARTIFACT_DAMAGE.values(), ids=ARTIFACT_DAMAGE.keys())
async def test_a_damaged_onnx_artifact_served_as_a_model_fails_readiness_naming_the_file(
    damage: Callable[[Path], None], tiny_artifact: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    damage(folder)
    settings = {**CPU, "backend": "onnx", "cache_dir": tmp_path / "cache"}
    async with running_app(None, model=[str(folder)], **settings) as (_app, client):
        ready = await client.get("/ready")
        body = ready.json()
        assert (ready.status_code, body["status"]) == (503, "failed")
        assert str(folder / MODEL_FILE) in body["error"], body["error"]
        assert "Traceback" not in body["error"]
        assert (await client.get("/health")).status_code == 200


# --- an exception inside warm-up ---------------------------------------------------------------


class _FailsFirstRun(FakeBackend):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.failed = False

    def run(self, batch: Batch) -> FloatArray:
        if not self.failed:
            self.failed = True
            raise RuntimeError("secret internal detail: warm-up kernel blew up")
        return super().run(batch)


async def test_an_exception_in_warm_up_fails_readiness_and_the_process_stays_up() -> None:
    backends: list[_FailsFirstRun] = []

    def factory(spec: ModelSpec, settings: Settings) -> _FailsFirstRun:
        backends.append(_FailsFirstRun(spec))
        return backends[-1]

    async with running_app(factory) as (app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        assert body["models"][0]["stage"] == "failed"
        name = app_state(app).engines.models[0].spec.name
        assert name in body["error"]
        assert "secret" not in ready.text and "Traceback" not in ready.text
        assert backends[0].failed
        for _ in range(3):  # stays failed (no silent retry into ready), and keeps answering
            health = await client.get("/health")
            assert (health.status_code, health.json()["stage"]) == (200, "failed")
            assert (await client.get("/ready")).status_code == 503
        embed = await client.post("/embed", json={"inputs": "x"})
        assert embed.status_code == 503
        assert "secret" not in embed.text


# --- a client that leaves mid-request ----------------------------------------------------------


async def _queued_inputs(client: httpx.AsyncClient, app: FastAPI) -> float:
    """This app's queued inputs, from its engine and from its `/metrics` series, which must
    agree (the gauge is process-wide, so other apps of the test session could move it; the
    engine's own count is the one asserted)."""
    text = (await client.get("/metrics")).text
    assert any(f.name == "ember_queue_inputs" for f in text_string_to_metric_families(text))
    return app_state(app).engines.in_flight()


async def _until(
    check: Callable[[], bool], *, within: float = 10.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


BATCH_DELAY = 0.2
"""Seconds each fake batch takes: long enough to leave in the middle of a request."""


async def test_a_cancelled_request_frees_its_queue_slots_and_skips_its_remaining_batches() -> None:
    factory = FakeFactory(delay=BATCH_DELAY)
    # Pinned: four full batches must fit in one request (max_client_batch_size).
    async with running_app(factory, warmup=False, max_batch_requests=8) as (app, client):
        backend = factory.backends[0]
        rows = app_state(app).engines.models[0].buckets.rows[-1]
        texts = [f"text number {i}" for i in range(4 * rows)]  # four full batches
        leaving = asyncio.create_task(client.post("/embed", json={"inputs": texts}))
        await _until(lambda: len(backend.batches) >= 1, what="the first batch")
        assert await _queued_inputs(client, app) == len(texts)
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(4 * BATCH_DELAY)  # as long as the rest would have taken
        # The batch running when the client left completes; the ones not started are skipped.
        assert len(backend.batches) <= 2, backend.batches
        assert await _queued_inputs(client, app) == 0
        assert app_state(app).in_flight.count == 0
        after = await client.post("/embed", json={"inputs": ["still", "serving"]})
        assert after.status_code == 200 and len(after.json()) == 2
        assert await _queued_inputs(client, app) == 0


@contextlib.asynccontextmanager
async def _served_over_tcp(factory: FakeFactory) -> AsyncIterator[tuple[FastAPI, int]]:
    """The app behind a real uvicorn on a loopback port, in this event loop → (app, port)."""
    # Pinned rows: four full batches must fit in one request (max_client_batch_size).
    settings = Settings(**{**FAST, "warmup": False, "max_batch_requests": 8})
    app = create_app(settings, backend_factory=factory)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await _until(lambda: server.started, what="uvicorn to start")
        await wait_stage(app, "ready")
        yield app, port
    finally:
        server.should_exit = True
        await serving


async def test_a_client_that_disconnects_over_tcp_leaves_the_server_serving() -> None:
    """The same over a real socket: uvicorn does not cancel a handler whose client left, so
    ember's middleware watches for the disconnect and cancels it; the batches not yet started
    are skipped, nothing leaks and other clients are served."""
    factory = FakeFactory(delay=BATCH_DELAY)
    async with _served_over_tcp(factory) as (app, port):
        backend = factory.backends[0]
        rows = app_state(app).engines.models[0].buckets.rows[-1]
        payload = json.dumps({"inputs": [f"text {i}" for i in range(4 * rows)]}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /embed HTTP/1.1\r\nHost: ember\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        writer.write(head + payload)
        await writer.drain()
        await _until(lambda: len(backend.batches) >= 1, what="the first batch")
        assert app_state(app).engines.in_flight() == 4 * rows
        writer.close()  # the client gives up mid-request
        await writer.wait_closed()
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            # Others are served meanwhile, and the queue drains back to zero.
            answer = await client.post("/embed", json={"inputs": "another client"})
            assert answer.status_code == 200
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while await _queued_inputs(client, app) != 0:
                assert loop.time() < deadline, "the queue never drained"
                await asyncio.sleep(0.05)
            await _until(lambda: app_state(app).in_flight.count == 0, what="no request in flight")
            assert (await client.get("/ready")).status_code == 200
        assert not await reader.read()  # nothing was ever meant to reach the closed socket
        abandoned = [shape for shape in backend.batches if shape[0] == rows]
        assert len(abandoned) < 4, backend.batches  # not every batch of the request ran


# --- request bodies never name files -----------------------------------------------------------

PATH_LIKE = [
    "/etc/passwd",
    "../../../../etc/passwd",
    str(builtin_path()),
    "file:///etc/passwd",
    "BAAI/bge-small-en-v1.5",
]
ROUTES: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("/embed", lambda m: {"inputs": "x", "model": m}),
    ("/v1/embeddings", lambda m: {"input": "x", "model": m}),
    ("/rerank", lambda m: {"query": "q", "texts": ["a"], "model": m}),
    ("/v1/rerank", lambda m: {"query": "q", "documents": ["a"], "model": m}),
    ("/predict", lambda m: {"inputs": "x", "model": m}),
    ("/tokenize", lambda m: {"inputs": "x", "model": m}),
    ("/", lambda m: {"inputs": "x", "model": m}),
]


async def test_a_model_field_naming_a_path_is_not_served_and_loads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    factory = FakeFactory()
    # Strict names: otherwise any name selects the one model (issue 14), and the 404 is moot.
    async with running_app(factory, strict_model_names=True) as (app, client):
        loaded = len(factory.backends)

        def no_loading(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a request tried to load a model: {args}")

        monkeypatch.setattr("ember.engine.registry.inspect_model", no_loading)
        monkeypatch.setattr("ember.engine.registry.resolve_specs", no_loading)
        served = app_state(app).engines.models[0].spec.name
        for route, make in ROUTES:
            for name in PATH_LIKE:
                r = await client.post(route, json=make(name))
                assert r.status_code == 404, (route, name, r.text)
                message = r.json()["error"]
                message = message["message"] if isinstance(message, dict) else message
                assert "not served" in message and served in message, message
                assert "root:" not in r.text
        assert len(factory.backends) == loaded
        assert [m.spec.name for m in app_state(app).engines.models] == [served]
        ok = await client.post("/embed", json={"inputs": "x", "model": served})
        assert ok.status_code == 200
