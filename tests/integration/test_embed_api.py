"""The TEI and OpenAI embedding routes, their error table, limits and metrics, in-process."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest

from tests.conftest import running_app
from tests.fakes import POISON, FakeFactory

pytestmark = pytest.mark.anyio

LONG = "word " * 400  # far over the 128-token cap the tests set


async def test_embed_shapes_and_normalisation() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        one = await client.post("/embed", json={"inputs": "hello"})
        assert one.status_code == 200
        vectors = np.array(one.json())
        assert vectors.shape == (1, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        many = np.array((await client.post("/embed", json={"inputs": ["a", "b", "c"]})).json())
        assert many.shape == (3, 384)
        raw = np.array(
            (await client.post("/embed", json={"inputs": "hello", "normalize": False})).json()
        )
        assert not np.allclose(np.linalg.norm(raw), 1.0)
        assert np.allclose(raw / np.linalg.norm(raw), vectors, atol=1e-5)


async def test_dimensions_keep_the_first_n_and_renormalise() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        raw = np.array(
            (await client.post("/embed", json={"inputs": "x", "normalize": False})).json()
        )[0]
        cut = np.array(
            (await client.post("/embed", json={"inputs": "x", "dimensions": 16})).json()
        )[0]
        assert cut.shape == (16,)
        assert np.allclose(cut, raw[:16] / np.linalg.norm(raw[:16]), atol=1e-5)


async def test_openai_float_and_base64_agree() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        body: dict[str, Any] = {"input": ["one", "two"], "model": "any"}
        floats = await client.post("/v1/embeddings", json=body | {"model": None})
        assert floats.status_code == 200
        data = floats.json()
        assert data["object"] == "list"
        assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 0
        assert [d["index"] for d in data["data"]] == [0, 1]
        b64 = (
            await client.post(
                "/v1/embeddings", json=body | {"model": None, "encoding_format": "base64"}
            )
        ).json()
        for f, b in zip(data["data"], b64["data"], strict=True):
            decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
            assert np.allclose(decoded, f["embedding"], atol=1e-6)


async def test_unknown_model_name_is_404_in_openai_shape() -> None:
    # Strict names: otherwise any name selects the one model (issue 14).
    async with running_app(FakeFactory(), strict_model_names=True) as (_app, client):
        r = await client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found_error"
        assert "nope" in r.json()["error"]["message"]


BAD_TEI: list[tuple[str, Any, int]] = [
    ("not json", b"{not json", 422),
    ("wrong type", {"inputs": 5}, 422),
    ("null inputs", {"inputs": None}, 422),
    ("missing inputs", {}, 422),
    ("empty list", {"inputs": []}, 422),
    ("list of non-strings", {"inputs": [{"a": 1}, 2]}, 422),
    ("token id out of vocabulary", {"inputs": [101, 999999]}, 422),
    ("nested lists", {"inputs": [["a"]]}, 422),
    ("too many inputs", {"inputs": ["x"] * 2049}, 413),
    ("too long, truncate off", {"inputs": LONG, "truncate": False}, 422),
    ("dimensions 0", {"inputs": "x", "dimensions": 0}, 422),
    ("dimensions negative", {"inputs": "x", "dimensions": -3}, 422),
    ("dimensions too large", {"inputs": "x", "dimensions": 100000}, 422),
    ("bad direction", {"inputs": "x", "truncation_direction": "middle"}, 422),
    ("unknown prompt", {"inputs": "x", "prompt_name": "nope"}, 422),
    ("deeply nested", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422),
    ("non-utf8 bytes", b'{"inputs": "\xff\xfe"}', 422),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_TEI, ids=[c[0] for c in BAD_TEI])
async def test_bad_input_gets_its_status_and_changes_nothing(
    case: str, body: Any, status: int
) -> None:
    async with running_app(FakeFactory()) as (_app, client):
        before = (await client.post("/embed", json={"inputs": "steady"})).json()
        if isinstance(body, bytes):
            r = await client.post(
                "/embed", content=body, headers={"content-type": "application/json"}
            )
        else:
            r = await client.post("/embed", json=body)
        assert r.status_code == status, r.text
        err = r.json()
        assert set(err) == {"error", "error_type"}
        assert err["error"] and "Traceback" not in err["error"]
        after = (await client.post("/embed", json={"inputs": "steady"})).json()
        assert after == before


BAD_OPENAI: list[tuple[str, Any, int]] = [
    ("wrong encoding", {"input": "x", "encoding_format": "int4"}, 422),
    ("token ids out of vocabulary", {"input": [[1, 2, -3]]}, 422),
    ("empty", {"input": []}, 422),
    ("too many", {"input": ["x"] * 2049}, 413),
    ("dimensions 0", {"input": "x", "dimensions": 0}, 422),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_OPENAI, ids=[c[0] for c in BAD_OPENAI])
async def test_openai_errors_use_openai_shape(case: str, body: Any, status: int) -> None:
    async with running_app(FakeFactory()) as (_app, client):
        r = await client.post("/v1/embeddings", json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) >= {"message", "type"}
        assert error["message"]


async def test_body_over_payload_limit_is_413_before_parsing() -> None:
    async with running_app(FakeFactory(), payload_limit=4096) as (_app, client):
        r = await client.post("/embed", json={"inputs": "x" * 10000})
        assert r.status_code == 413
        assert r.json()["error_type"] == "too_large"

        async def chunks() -> Any:  # no Content-Length: cut off while streaming
            for _ in range(100):
                yield b"x" * 1000

        r = await client.post(
            "/embed", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert (await client.post("/embed", json={"inputs": "ok"})).status_code == 200


async def test_wrong_task_is_424_naming_the_task() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        r = await client.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 424
        assert "embed" in r.json()["error"]
        r = await client.post("/predict", json={"inputs": "a"})
        assert r.status_code == 424


async def test_overload_answers_429_with_retry_after_and_recovers() -> None:
    factory = FakeFactory(delay=0.05)
    async with running_app(factory, max_concurrent_requests=16) as (_app, client):
        burst = [client.post("/embed", json={"inputs": ["t"] * 8}) for _ in range(20)]
        responses = await asyncio.gather(*burst)
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 429}
        assert 429 in statuses and 200 in statuses
        limited = next(r for r in responses if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert (await client.post("/embed", json={"inputs": "after"})).status_code == 200


async def test_a_failing_batch_fails_its_requests_only() -> None:
    factory = FakeFactory()
    async with running_app(factory) as (app, client):
        from ember.http.app import app_state

        tokenizer = app_state(app).engines.models[0].tokenizer
        assert tokenizer is not None
        poison = tokenizer.decode([POISON])
        bad = await client.post("/embed", json={"inputs": poison})
        assert bad.status_code == 500
        assert "secret" not in bad.text and "poisoned" not in bad.text
        assert bad.json()["error_type"] == "backend"
        assert (await client.post("/embed", json={"inputs": "fine"})).status_code == 200


async def test_tokenize_and_info_and_models() -> None:
    # Pinned buckets: /info must report the configured ones.
    async with running_app(FakeFactory(), seq_buckets=[16, 64]) as (_app, client):
        tokens = (await client.post("/tokenize", json={"inputs": "Hello world"})).json()
        assert [t["text"] for t in tokens[0]] == ["[CLS]", "Hello", "world", "[SEP]"]
        assert tokens[0][0]["special"] is True and tokens[0][1]["start"] == 0
        info = (await client.get("/info")).json()
        assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert info["max_input_length"] == 128
        assert info["models"][0]["buckets"]["seq"] == [16, 64, 128]
        assert info["warmup"]["covered"] is True
        assert info["threads"] >= 1
        # One process (CPU default): the worker section names no GPU narrowing.
        assert info["workers"] == {"workers": 1, "worker": 0, "devices": [None]}
        models = (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == "sentence-transformers/all-MiniLM-L6-v2"


async def test_root_dispatches_to_embed() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        r = await client.post("/", json={"inputs": ["a", "b"]})
        assert r.status_code == 200
        assert len(r.json()) == 2


async def test_metrics_list_every_series_before_any_request() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        text = (await client.get("/metrics")).text
        for series in (
            "ember_stage{",
            'ember_requests_total{route="/embed"',
            "ember_request_phase_seconds_bucket{",
            "ember_queue_inputs{",
            "ember_batch_rows_bucket{",
            "ember_batch_padded_tokens_bucket{",
            'ember_failures_total{kind="overloaded"}',
            "ember_warmup_shape_seconds{",
            "ember_load_seconds{",
        ):
            assert series in text, series


async def test_api_key_guards_everything_but_probes() -> None:
    async with running_app(FakeFactory(), api_key="s3cret") as (app, client):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        r = await client.post("/embed", json={"inputs": "x"})
        assert r.status_code == 401
        assert r.json()["error_type"] == "unauthorized"
        r = await client.post(
            "/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        ok = await client.post(
            "/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        info = await client.get("/info", headers={"Authorization": "Bearer s3cret"})
        assert "s3cret" not in info.text
        # Route by route from the app's own route table, so a new route cannot slip through.
        from ember.http.table import open_routes

        table = app.openapi()["paths"]
        checked = 0
        for path, methods in table.items():
            if path in ("/health", "/ready", "/metrics"):
                continue
            for method in methods:
                if (method.upper(), path) in open_routes(metrics_public=True):
                    continue
                r = await client.request(method.upper(), path)
                assert r.status_code == 401, (method, path)
                checked += 1
        assert checked >= 9
        for path in ("/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == 401
