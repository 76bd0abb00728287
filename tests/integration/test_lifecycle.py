"""Stages are observable from the probes: loading, warming, ready, failed, draining."""

from __future__ import annotations

import asyncio

import pytest

from ember.http.app import app_state
from tests.conftest import running_app, wait_stage
from tests.fakes import CPU_COARSE, FakeFactory

pytestmark = pytest.mark.anyio


async def test_alive_but_not_ready_while_loading() -> None:
    factory = FakeFactory()
    factory.hold()
    async with running_app(factory, wait=False) as (app, client):
        await wait_stage(app, "loading")
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "alive", "stage": "loading"}
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "loading"
        assert ready.headers["retry-after"] == "1"
        embed = await client.post("/embed", json={"inputs": "hi"})
        assert embed.status_code == 503
        assert embed.json()["error_type"] == "not_ready"
        assert "retry-after" in embed.headers
        factory.release.set()
        await wait_stage(app, "ready")
        ready = await client.get("/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        report = body["warmup"][0]
        assert report["covered"] is True
        assert report["shape_count"] == len(report["shapes"]) > 1
        assert all(len(s["seconds"]) == report["rounds"] for s in report["shapes"])
        assert (await client.post("/embed", json={"inputs": "hi"})).status_code == 200


async def test_warmup_ran_every_bucket_shape_before_ready() -> None:
    # A coarse-bucket backend: with every length a bucket, `full` is thousands of shapes.
    factory = FakeFactory(capabilities=CPU_COARSE)
    async with running_app(factory, warmup_plan="full") as (app, _client):
        model = app_state(app).engines.models[0]
        ran = set(factory.backends[0].batches)
        assert ran == set(model.buckets.shapes())


async def test_failed_load_is_reported_and_process_stays_up() -> None:
    factory = FakeFactory(fail="weights at /models/x are corrupt")
    async with running_app(factory) as (_app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        assert "weights at /models/x are corrupt" in body["error"]
        assert (await client.get("/health")).json()["stage"] == "failed"
        assert (await client.post("/embed", json={"inputs": "x"})).status_code == 503


async def test_missing_model_folder_fails_with_its_path(tmp_path: object) -> None:
    async with running_app(FakeFactory(), model=["/nonexistent/model-dir"]) as (_app, client):
        body = (await client.get("/ready")).json()
        assert body["status"] == "failed"
        assert "/nonexistent/model-dir" in body["error"]
        assert "Traceback" not in body["error"]


async def test_no_warmup_goes_straight_to_ready() -> None:
    factory = FakeFactory()
    async with running_app(factory, warmup=False) as (_app, client):
        assert (await client.get("/ready")).status_code == 200
        assert factory.backends[0].batches == []


async def test_draining_answers_503_everywhere_but_health() -> None:
    async with running_app(FakeFactory()) as (app, client):
        app_state(app).engines.drain()
        assert (await client.get("/ready")).json()["status"] == "draining"
        assert (await client.get("/ready")).status_code == 503
        assert (await client.post("/embed", json={"inputs": "x"})).status_code == 503
        assert (await client.get("/health")).status_code == 200


async def test_in_flight_requests_finish_during_drain() -> None:
    factory = FakeFactory(delay=0.05)
    async with running_app(factory, warmup=False) as (app, client):
        pending = [
            asyncio.create_task(client.post("/embed", json={"inputs": [f"text {i}"] * 4}))
            for i in range(6)
        ]
        await asyncio.sleep(0.02)
        app_state(app).engines.drain()
        statuses = [(await p).status_code for p in pending]
        # Admitted before the drain: all answered; anything after: 503, never a 500.
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 1


async def test_cover_plan_runs_the_largest_shape_and_both_length_ends() -> None:
    factory = FakeFactory()
    async with running_app(factory, warmup_plan="cover") as (app, client):
        buckets = app_state(app).engines.models[0].buckets
        plan = {buckets.shapes()[0], (1, buckets.seq[0]), (1, buckets.seq[-1])}
        ran = factory.backends[0].batches[: len(plan)]  # then the HTTP part of warm-up
        assert ran[0] == buckets.shapes()[0]  # the memory peak comes first
        assert set(ran) == plan
        report = (await client.get("/ready")).json()["warmup"][0]
        assert report["plan"] == "cover"
        assert report["shape_set"] == len(buckets.shapes())
