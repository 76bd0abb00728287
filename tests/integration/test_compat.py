"""Issue 14: what clients send with their defaults is served (unknown fields, OpenAI's batch
sizes, HEAD probes, TEI's extra paths), and what used to answer 500 answers 4xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import running_app
from tests.fakes import FakeFactory

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def three(tiny_embedder: Path, tiny_reranker: Path, tiny_classifier: Path) -> list[str]:
    return [f"emb={tiny_embedder}", f"rr={tiny_reranker}", f"cls={tiny_classifier}"]


# What real clients add: huggingface_hub `parameters`, litellm `input_type`/`top_n`, ...
EXTRAS: list[tuple[str, dict[str, Any]]] = [
    ("/embed", {"inputs": "x", "parameters": {}, "colour": "red"}),
    ("/v1/embeddings", {"input": "x", "input_type": "query", "extra": [1]}),
    ("/embeddings", {"input": ["x", "y"], "user": "u", "top_n": 3}),
    ("/rerank", {"query": "q", "texts": ["a", "b"], "top_n": 1}),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": ["text"]}),
    ("/predict", {"inputs": "x", "parameters": {"function_to_apply": "none"}}),
    ("/tokenize", {"inputs": "x", "prompt_name": None, "whatever": True, "model": "emb"}),
]


async def test_unknown_fields_are_ignored_and_known_ones_keep_their_types(
    three: list[str],
) -> None:
    async with running_app(FakeFactory(), model=three) as (_app, client):
        for path, body in EXTRAS:
            r = await client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
        r = await client.post("/embed", json={"inputs": "x", "normalize": [1], "extra": 1})
        assert r.status_code == 422
        r = await client.post("/v1/embeddings", json={"input": "x", "dimensions": "wide"})
        assert r.status_code == 422


async def test_head_probes_and_get_root_answer_like_health() -> None:
    async with running_app(FakeFactory(), api_key="k") as (_app, client):
        for path in ("/health", "/ready", "/"):
            head = await client.head(path)
            assert head.status_code == 200, path
            assert head.content == b""
        root = await client.get("/")
        assert root.json() == (await client.get("/health")).json()
        assert (await client.post("/", json={"inputs": "x"})).status_code == 401


async def test_embeddings_without_v1_is_openai() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        body = {"input": ["a", "b"], "model": "text-embedding-3-small"}
        with_v1 = (await client.post("/v1/embeddings", json=body | {"model": None})).json()
        without = await client.post("/embeddings", json=body | {"model": None})
        assert without.status_code == 200
        assert without.json()["data"] == with_v1["data"]
        bad = await client.post("/embeddings", json={"input": []})
        assert "message" in bad.json()["error"]  # OpenAI's error object


async def test_openai_batch_limit_is_2048_inputs() -> None:
    # The queue bound counts inputs until admission counts work (issue 15): room for 2048.
    async with running_app(FakeFactory(), max_concurrent_requests=4096) as (_app, client):
        ok = await client.post("/v1/embeddings", json={"input": ["t"] * 2048})
        assert ok.status_code == 200
        assert len(ok.json()["data"]) == 2048
        too_many = await client.post("/v1/embeddings", json={"input": ["t"] * 2049})
        assert too_many.status_code == 413
        assert "2048" in too_many.json()["error"]["message"]
        assert (await client.post("/embed", json={"inputs": ["t"] * 1000})).status_code == 200


async def test_tokenize_refuses_a_lone_surrogate_and_tokenises_large_bodies() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        raw = b'{"inputs": "abc \\ud800 def"}'
        r = await client.post(
            "/tokenize", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422
        assert "surrogate" in r.json()["error"]
        big = ["word " * 2000, "other " * 2000]  # over the inline size: tokenised on a thread
        tokens = (await client.post("/tokenize", json={"inputs": big})).json()
        assert [len(t) for t in tokens] == [128, 128]  # truncated to max_input_length
        assert (await client.post("/tokenize", json={"inputs": "ok"})).status_code == 200


async def test_dimensions_without_normalisation_serialise() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        body = {"inputs": ["a", "b"], "dimensions": 8, "normalize": False}
        r = await client.post("/embed", json=body)
        assert r.status_code == 200, r.text
        assert np.array(r.json()).shape == (2, 8)


async def test_ready_reports_load_and_warmup_seconds(three: list[str]) -> None:
    async with running_app(FakeFactory(), model=three) as (_app, client):
        body = (await client.get("/ready")).json()
        assert body["load_seconds"] >= 0 and body["warmup_seconds"] > 0
        for model in body["models"]:
            assert model["load_seconds"] >= 0 and model["warmup_seconds"] > 0
        per_model = sum(m["warmup_seconds"] for m in body["models"])
        assert body["warmup_seconds"] >= per_model - 0.003


async def test_cors_preflight_is_answered_before_the_key_check() -> None:
    async with running_app(FakeFactory(), api_key="k", cors_origins=["https://app.example"]) as (
        _app,
        client,
    ):
        preflight = await client.options(
            "/embed",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        r = await client.post(
            "/embed", json={"inputs": "x"}, headers={"Origin": "https://app.example"}
        )
        assert r.status_code == 401


async def test_an_unexpected_error_is_a_json_500_and_the_app_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_app(FakeFactory()) as (app, client):
        from ember.http.app import app_state

        engines = app_state(app).engines

        def boom() -> None:
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(engines, "snapshot", boom)
        r = await client.get("/ready")  # the transport would raise if the app re-raised
        assert r.status_code == 500
        assert r.json()["error_type"] == "internal" and "secret" not in r.text
        monkeypatch.undo()
        assert (await client.get("/ready")).status_code == 200
