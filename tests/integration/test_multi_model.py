"""Several models in one server: each loaded, warmed for its own task and chosen by name or task."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.bench.tiny_models import reference_embeddings, reference_logits, sigmoid, softmax
from tests.conftest import running_app
from tests.corpus import PARITY_TEXTS
from tests.integration.conftest import MAX_LENGTH, QUERY, TOL, by_index, by_label

pytestmark = pytest.mark.anyio

TORCH: dict[str, Any] = {"backend": "torch", "device": "cpu", "threads": 1}
TASKS = {"emb": "embed", "rr": "rerank", "cls": "classify"}


@pytest.fixture(scope="module")
def three(tiny_embedder: Path, tiny_reranker: Path, tiny_classifier: Path) -> list[str]:
    return [f"emb={tiny_embedder}", f"rr={tiny_reranker}", f"cls={tiny_classifier}"]


async def test_embed_rerank_and_classify_served_together(
    three: list[str], tiny_embedder: Path, tiny_reranker: Path, tiny_classifier: Path
) -> None:
    texts = list(PARITY_TEXTS)
    async with running_app(None, model=three, **TORCH) as (_app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert {m["name"]: (m["task"], m["stage"]) for m in body["models"]} == {
            name: (task, "ready") for name, task in TASKS.items()
        }
        reports = {r["model"]: r for r in body["warmup"]}
        assert {name: r["task"] for name, r in reports.items()} == TASKS
        assert all(r["covered"] and r["shapes"] for r in reports.values())

        listed = (await client.get("/v1/models")).json()["data"]
        assert {m["id"]: m["task"] for m in listed} == TASKS
        info = (await client.get("/info")).json()
        assert {m["model_id"]: m["task"] for m in info["models"]} == TASKS
        assert all(m["warmup"]["covered"] for m in info["models"])

        # Each TEI route goes to the one model of its task; results match the references.
        embedded = np.array((await client.post("/embed", json={"inputs": texts})).json())
        expected = reference_embeddings(tiny_embedder, texts, max_length=MAX_LENGTH)
        assert np.abs(embedded - expected).max() <= TOL
        ranked = (await client.post("/rerank", json={"query": QUERY, "texts": texts})).json()
        logits = reference_logits(
            tiny_reranker, [QUERY] * len(texts), texts, max_length=MAX_LENGTH
        )[:, 0]
        assert np.abs(by_index(ranked) - sigmoid(logits)).max() <= TOL
        predicted = (await client.post("/predict", json={"inputs": texts})).json()
        served = np.stack([by_label(p) for p in predicted])
        assert (
            np.abs(
                served - softmax(reference_logits(tiny_classifier, texts, max_length=MAX_LENGTH))
            ).max()
            <= TOL
        )

        # OpenAI routes choose by `model`.
        r = await client.post("/v1/embeddings", json={"input": texts[:3], "model": "emb"})
        assert r.status_code == 200 and r.json()["model"] == "emb"
        vectors = np.array([d["embedding"] for d in r.json()["data"]])
        assert np.abs(vectors - expected[:3]).max() <= TOL
        r = await client.post("/v1/embeddings", json={"input": "x", "model": "rr"})
        assert r.status_code == 424
        assert "rerank" in r.json()["error"]["message"]
        r = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": texts, "model": "rr"}
        )
        assert r.status_code == 200 and r.json()["model"] == "rr"
        assert (
            np.abs(by_index(r.json()["results"], "relevance_score") - sigmoid(logits)).max() <= TOL
        )
        r = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": ["a"], "model": "cls"}
        )
        assert r.status_code == 424
        # `rr` is the one reranker: any name selects it (issue 14), and the answer names it.
        r = await client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"], "model": "x"})
        assert r.status_code == 200 and r.json()["model"] == "rr"

        # `POST /` serves the named model's task.
        r = await client.post("/", json={"inputs": "hello", "model": "cls"})
        assert r.status_code == 200 and {p["label"] for p in r.json()} >= {"positive"}
        r = await client.post("/", json={"query": QUERY, "texts": ["a", "b"], "model": "rr"})
        assert r.status_code == 200 and len(r.json()) == 2


@pytest.mark.parametrize("broken", ["missing", "no-weights"])
async def test_one_bad_model_among_good_ones_fails_readiness_naming_it(
    broken: str, three: list[str], tiny_reranker: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-model"
    if broken == "no-weights":
        bad.mkdir()
        for name in ("config.json", "tokenizer.json"):
            shutil.copy(tiny_reranker / name, bad / name)
    models = [three[0], f"wobbly={bad}", *three[1:]]
    async with running_app(None, model=models, **TORCH) as (_app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        assert "wobbly" in body["error"] and str(bad) in body["error"]
        r = await client.post("/embed", json={"inputs": "x", "model": "emb"})
        assert r.status_code == 503


async def test_two_models_of_one_task_need_a_name(
    tiny_reranker: Path, tiny_cross_encoder: Path
) -> None:
    models = [f"plain={tiny_reranker}", f"crossenc={tiny_cross_encoder}"]
    docs = ["a cat is a small animal", "hello world", "Paris is the capital of France"]
    async with running_app(None, model=models, **TORCH) as (_app, client):
        assert (await client.get("/ready")).status_code == 200
        r = await client.post("/rerank", json={"query": QUERY, "texts": docs})
        assert r.status_code == 422
        message = r.json()["error"]
        assert "plain" in message and "crossenc" in message and "model" in message
        r = await client.post("/v1/rerank", json={"query": QUERY, "documents": docs})
        assert r.status_code == 422
        assert "name one" in r.json()["error"]["message"]
        scores = {}
        for name in ("plain", "crossenc"):
            r = await client.post("/rerank", json={"query": QUERY, "texts": docs, "model": name})
            assert r.status_code == 200, r.text
            scores[name] = by_index(r.json())
        # The cross-encoder folder holds the same weights, saved by sentence-transformers.
        assert np.abs(scores["plain"] - scores["crossenc"]).max() <= TOL


async def test_two_embedders_each_pool_their_own_way(
    tiny_embedder: Path, tiny_cls_embedder: Path
) -> None:
    texts = ["hello", "The quick brown fox jumps over the lazy dog.", PARITY_TEXTS[7]]
    models = [f"mean={tiny_embedder}", f"cls={tiny_cls_embedder}"]
    async with running_app(None, model=models, **TORCH) as (_app, client):
        info = (await client.get("/info")).json()
        assert {m["model_id"]: m["pooling"] for m in info["models"]} == {
            "mean": "mean",
            "cls": "cls",
        }
        r = await client.post("/embed", json={"inputs": texts})
        assert r.status_code == 422
        assert "name one" in r.json()["error"]
        r = await client.post("/v1/embeddings", json={"input": texts})
        assert r.status_code == 422
        for name, path in (("mean", tiny_embedder), ("cls", tiny_cls_embedder)):
            r = await client.post("/embed", json={"inputs": texts, "model": name})
            assert r.status_code == 200, r.text
            assert (
                np.abs(
                    np.array(r.json()) - reference_embeddings(path, texts, max_length=MAX_LENGTH)
                ).max()
                <= TOL
            )
