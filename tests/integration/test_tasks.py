"""Rerank and classify through the whole app, against transformers and sentence-transformers.

Tiny real models (ember.bench.tiny_models) run on the real backends; every score the routes return
must equal the reference computed on the same weights (fp32, max abs diff ≤ 1e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends.base import Batch, FloatArray
from ember.backends.loader import create_backend
from ember.bench.tiny_models import (
    CLASSIFY_LABELS,
    build_reranker,
    reference_logits,
    sigmoid,
    softmax,
)
from ember.engine.warmup import plan_shapes
from ember.http.app import app_state
from ember.models import ModelSpec
from ember.settings import Settings
from tests.conftest import running_app
from tests.corpus import PARITY_TEXTS
from tests.integration.conftest import MAX_LENGTH, QUERY, TOL, by_index, by_label

pytestmark = pytest.mark.anyio

PAIRS = [
    ["A man is eating food.", "A man eats something."],
    ["The cat sat on the mat.", "Quantum chromodynamics is hard."],
    [PARITY_TEXTS[6], PARITY_TEXTS[7]],
    ["short", PARITY_TEXTS[15]],  # the second text is over the cap: truncated like transformers
]
BACKENDS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    # name: (settings, what /info must then say about the model)
    "torch-native": (
        {"backend": "torch", "torch_native": True},
        {"backend": "torch", "implementation": "native-bert"},
    ),
    "torch-transformers": (
        {"backend": "torch", "torch_native": False},
        {"backend": "torch", "implementation": "transformers"},
    ),
    "onnx": ({"backend": "onnx"}, {"backend": "onnx"}),
}


def serve(path: Path, backend: str, cache_dir: Path, **overrides: Any) -> Any:
    """The app on one of `BACKENDS`, on CPU, warmed with the small test buckets."""
    return running_app(
        None,
        model=[str(path)],
        device="cpu",
        threads=1,
        cache_dir=cache_dir,
        **BACKENDS[backend][0],
        **overrides,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX artifact cache for the module, so each tiny model is prepared once."""
    return tmp_path_factory.mktemp("ember-cache")


# --- helpers ---------------------------------------------------------------------------------


async def assert_backend(client: Any, backend: str) -> None:
    """The model really runs on `backend` (no silent fallback to another one)."""
    described = (await client.get("/info")).json()["models"][0]
    for key, value in BACKENDS[backend][1].items():
        assert described[key] == value, (key, described)


def assert_spread(values: FloatArray) -> None:
    """The scores differ between inputs, so the parity and order checks have teeth."""
    assert float(values.max() - values.min()) > 0.01, values


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_rerank_scores_match_transformers(
    backend: str, tiny_reranker: Path, cache_dir: Path
) -> None:
    docs = list(PARITY_TEXTS)
    logits = reference_logits(tiny_reranker, [QUERY] * len(docs), docs, max_length=MAX_LENGTH)[:, 0]
    assert_spread(logits)
    async with serve(tiny_reranker, backend, cache_dir) as (_app, client):
        assert (await client.get("/ready")).status_code == 200
        await assert_backend(client, backend)
        r = await client.post("/rerank", json={"query": QUERY, "texts": docs})
        assert r.status_code == 200, r.text
        ranked = r.json()
        assert sorted(item["index"] for item in ranked) == list(range(len(docs)))
        assert np.abs(by_index(ranked) - sigmoid(logits)).max() <= TOL
        raw = (
            await client.post("/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True})
        ).json()
        assert np.abs(by_index(raw) - logits).max() <= TOL
        assert [i["index"] for i in raw] == [i["index"] for i in ranked]


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_cross_encoder_folder_matches_sentence_transformers(
    backend: str, tiny_cross_encoder: Path, cache_dir: Path
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    docs = list(PARITY_TEXTS)
    reference = CrossEncoder(
        str(tiny_cross_encoder), device="cpu", max_length=MAX_LENGTH, local_files_only=True
    )
    pairs = [(QUERY, d) for d in docs]
    expected = reference.predict(pairs, batch_size=64)  # the folder's own activation: sigmoid
    expected_raw = reference.predict(pairs, batch_size=64, activation_fn=torch.nn.Identity())
    assert_spread(expected_raw)
    async with serve(tiny_cross_encoder, backend, cache_dir) as (_app, client):
        info = (await client.get("/info")).json()
        assert info["models"][0]["task"] == "rerank"
        await assert_backend(client, backend)
        ranked = (await client.post("/rerank", json={"query": QUERY, "texts": docs})).json()
        assert np.abs(by_index(ranked) - expected).max() <= TOL
        raw = (
            await client.post("/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True})
        ).json()
        assert np.abs(by_index(raw) - expected_raw).max() <= TOL
        v1 = (await client.post("/v1/rerank", json={"query": QUERY, "documents": docs})).json()
        assert np.abs(by_index(v1["results"], "relevance_score") - expected).max() <= TOL


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_classify_scores_match_transformers(
    backend: str, tiny_classifier: Path, cache_dir: Path
) -> None:
    texts = list(PARITY_TEXTS)
    logits = reference_logits(tiny_classifier, texts, max_length=MAX_LENGTH)
    assert_spread(logits[:, 0])
    firsts, seconds = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    pair_logits = reference_logits(tiny_classifier, firsts, seconds, max_length=MAX_LENGTH)
    async with serve(tiny_classifier, backend, cache_dir) as (_app, client):
        await assert_backend(client, backend)
        got = (await client.post("/predict", json={"inputs": texts})).json()
        assert len(got) == len(texts)
        served = np.stack([by_label(p) for p in got])
        assert np.abs(served - softmax(logits)).max() <= TOL
        raw = (await client.post("/predict", json={"inputs": texts, "raw_scores": True})).json()
        assert np.abs(np.stack([by_label(p) for p in raw]) - logits).max() <= TOL

        pairs = (await client.post("/predict", json={"inputs": PAIRS})).json()
        served_pairs = np.stack([by_label(p) for p in pairs])
        assert np.abs(served_pairs - softmax(pair_logits)).max() <= TOL
        one_pair = (await client.post("/predict", json={"inputs": PAIRS[0]})).json()
        assert np.abs(by_label(one_pair) - softmax(pair_logits)[0]).max() <= TOL


async def test_far_negative_rerank_logits_score_zero_without_warnings(tmp_path: Path) -> None:
    # Logits below -88 overflow exp(-x) in float32; the score is 0, with no RuntimeWarning
    # (pytest turns warnings into errors, as a strict deployment would log them per request).
    path = build_reranker(tmp_path / "gloomy", logit_shift=-200.0)
    docs = ["a cat is a small animal", "hello world"]
    logits = reference_logits(path, [QUERY] * 2, docs, max_length=MAX_LENGTH)[:, 0]
    assert (logits < -150).all()
    async with serve(path, "torch-native", tmp_path / "cache") as (_app, client):
        r = await client.post("/rerank", json={"query": QUERY, "texts": docs})
        assert r.status_code == 200, r.text
        assert [item["score"] for item in r.json()] == [0.0, 0.0]
        raw = (
            await client.post("/rerank", json={"query": QUERY, "texts": docs, "raw_scores": True})
        ).json()
        assert np.abs(by_index(raw) - logits).max() <= 1e-3  # fp32 ulp at 200 is 1.5e-5


# --- route behaviour -------------------------------------------------------------------------


async def test_rerank_routes_sort_and_shape(tiny_reranker: Path, cache_dir: Path) -> None:
    docs = ["a cat is a small animal", "hello world", "", "Paris is the capital of France"]
    async with serve(tiny_reranker, "torch-native", cache_dir) as (_app, client):
        r = await client.post("/rerank", json={"query": QUERY, "texts": docs, "return_text": True})
        ranked = r.json()
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < s < 1.0 for s in scores)
        assert [item["text"] for item in ranked] == [docs[item["index"]] for item in ranked]
        plain = (await client.post("/rerank", json={"query": QUERY, "texts": docs})).json()
        assert all(set(item) == {"index", "score"} for item in plain)

        v1 = await client.post(
            "/v1/rerank",
            json={"query": QUERY, "documents": docs, "top_n": 2, "return_documents": True},
        )
        assert v1.status_code == 200, v1.text
        body = v1.json()
        assert body["model"] == tiny_reranker.name
        assert body["usage"]["total_tokens"] > 3 * len(docs)  # [CLS] q [SEP] d [SEP] per pair
        assert [res["index"] for res in body["results"]] == [i["index"] for i in ranked[:2]]
        for res, item in zip(body["results"], ranked, strict=False):
            assert res["relevance_score"] == pytest.approx(item["score"], abs=1e-6)
            assert res["document"] == {"text": docs[res["index"]]}
        bare = (await client.post("/v1/rerank", json={"query": QUERY, "documents": docs})).json()
        assert len(bare["results"]) == len(docs)
        assert all("document" not in res for res in bare["results"])

        # `POST /` dispatches on the model's task.
        root = await client.post("/", json={"query": QUERY, "texts": docs})
        assert root.status_code == 200
        assert root.json() == plain


async def test_predict_input_shapes(tiny_classifier: Path, cache_dir: Path) -> None:
    labels = set(CLASSIFY_LABELS.values())
    async with serve(tiny_classifier, "torch-native", cache_dir) as (_app, client):
        one = (await client.post("/predict", json={"inputs": "I love it"})).json()
        assert {p["label"] for p in one} == labels
        assert [p["score"] for p in one] == sorted((p["score"] for p in one), reverse=True)
        assert sum(p["score"] for p in one) == pytest.approx(1.0, abs=1e-5)
        pair = (await client.post("/predict", json={"inputs": ["I love it", "me too"]})).json()
        assert {p["label"] for p in pair} == labels  # one prediction list, not two
        texts = (await client.post("/predict", json={"inputs": ["a", "b", "c"]})).json()
        assert len(texts) == 3 and all({p["label"] for p in t} == labels for t in texts)
        pairs = (await client.post("/predict", json={"inputs": [["a", "b"], ["c", "d"]]})).json()
        assert len(pairs) == 2 and all(len(p) == 3 for p in pairs)
        root = await client.post("/", json={"inputs": "I love it"})
        assert root.status_code == 200
        assert root.json() == one


async def test_wrong_task_is_424_naming_the_models_task(
    tiny_reranker: Path, tiny_embedder: Path, cache_dir: Path
) -> None:
    async with serve(tiny_reranker, "torch-native", cache_dir) as (_app, client):
        for path, body in [
            ("/embed", {"inputs": "x"}),
            ("/predict", {"inputs": "x"}),
        ]:
            r = await client.post(path, json=body)
            assert r.status_code == 424, (path, r.text)
            assert r.json()["error_type"] == "wrong_task"
            assert "rerank" in r.json()["error"] and tiny_reranker.name in r.json()["error"]
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 424
        assert "rerank" in r.json()["error"]["message"]
    async with serve(tiny_embedder, "torch-native", cache_dir) as (_app, client):
        for path, body in [
            ("/rerank", {"query": "q", "texts": ["a"]}),
            ("/v1/rerank", {"query": "q", "documents": ["a"]}),
        ]:
            r = await client.post(path, json=body)
            assert r.status_code == 424, (path, r.text)
            error = r.json()["error"]
            assert "embed" in (error["message"] if isinstance(error, dict) else error)


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("rerank empty", "/rerank", {"query": "q", "texts": []}, 422),
    ("rerank too many", "/rerank", {"query": "q", "texts": ["t"] * 2049}, 413),
    ("rerank no query", "/rerank", {"texts": ["t"]}, 422),
    ("v1 rerank empty", "/v1/rerank", {"query": "q", "documents": []}, 422),
    ("v1 rerank too many", "/v1/rerank", {"query": "q", "documents": ["t"] * 2049}, 413),
    ("v1 rerank top_n 0", "/v1/rerank", {"query": "q", "documents": ["t"], "top_n": 0}, 422),
    ("root rerank empty", "/", {"query": "q", "texts": []}, 422),
    ("root wrong body", "/", {"inputs": 5}, 422),
    (
        "rerank too long, truncate off",
        "/rerank",
        {"query": "q", "texts": [PARITY_TEXTS[15]], "truncate": False},
        422,
    ),
]


async def test_rerank_bad_requests(tiny_reranker: Path, cache_dir: Path) -> None:
    async with serve(tiny_reranker, "torch-native", cache_dir) as (_app, client):
        for case, path, body, status in BAD_REQUESTS:
            r = await client.post(path, json=body)
            assert r.status_code == status, (case, r.text)
            assert "Traceback" not in r.text


BAD_PREDICT: list[tuple[str, Any, int]] = [
    ("empty", [], 422),
    ("too many texts", ["t"] * 2049, 413),
    ("too many pairs", [["a", "b"]] * 2049, 413),
    ("triple", [["a", "b", "c"]], 422),
    ("number", 5, 422),
]


async def test_predict_bad_requests(tiny_classifier: Path, cache_dir: Path) -> None:
    async with serve(tiny_classifier, "torch-native", cache_dir) as (_app, client):
        for case, inputs, status in BAD_PREDICT:
            r = await client.post("/predict", json={"inputs": inputs})
            assert r.status_code == status, (case, r.text)
            assert r.json()["error_type"] in ("validation", "too_large")
            root = await client.post("/", json={"inputs": inputs})
            assert root.status_code == status, (case, root.text)


# --- warm-up ---------------------------------------------------------------------------------


class _Recording:
    """The real backend factory, remembering whether each batch held a second segment."""

    def __init__(self) -> None:
        self.pair_batches: list[bool] = []

    def __call__(self, spec: ModelSpec, settings: Settings) -> Any:
        backend = create_backend(spec, settings)
        inner = backend.run

        def run(batch: Batch) -> FloatArray:
            real = batch.token_type_ids[: batch.real_rows]
            self.pair_batches.append(bool((real == 1).any(axis=1).all()))
            return inner(batch)

        backend.run = run  # type: ignore[method-assign]
        return backend


@pytest.mark.parametrize("plan", ["full", "cover"])
async def test_reranker_warms_up_with_pairs_over_its_plan(tiny_reranker: Path, plan: str) -> None:
    recording = _Recording()
    async with running_app(
        recording,
        model=[str(tiny_reranker)],
        backend="torch",
        device="cpu",
        threads=1,
        warmup_plan=plan,
    ) as (app, client):
        ready = await client.get("/ready")
        assert ready.status_code == 200
        (report,) = ready.json()["warmup"]
        assert (report["task"], report["plan"], report["covered"]) == ("rerank", plan, True)
        assert report["shapes"]
        buckets = app_state(app).engines.models[0].buckets
        assert report["shape_set"] == len(buckets.shapes())
        ran = [(s["rows"], s["seq"]) for s in report["shapes"]]
        assert ran == plan_shapes(buckets, plan)
        # `full` runs every padded length; `cover` the longest and the shortest.
        ends = {buckets.seq[0], buckets.seq[-1]}
        assert {seq for _, seq in ran} == (set(buckets.seq) if plan == "full" else ends)
        warm_batches = recording.pair_batches[: len(ran)]
        assert len(warm_batches) == len(ran)
        assert all(warm_batches), "every warm-up row of a reranker is a (query, text) pair"
