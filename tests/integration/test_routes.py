"""Issue 14's routes in TEI's, Cohere's and SageMaker's shapes, quantised output and TEI's
timing headers, in-process with the fake backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ember.http.app import app_state
from tests.conftest import running_app
from tests.fakes import CPU_EXACT, FakeFactory

pytestmark = pytest.mark.anyio

TIMING = (
    "x-compute-time",
    "x-total-time",
    "x-tokenization-time",
    "x-queue-time",
    "x-inference-time",
    "x-compute-tokens",
    "x-compute-characters",
)


@pytest.fixture(scope="module")
def three(tiny_embedder: Path, tiny_reranker: Path, tiny_classifier: Path) -> list[str]:
    return [f"emb={tiny_embedder}", f"rr={tiny_reranker}", f"cls={tiny_classifier}"]


async def test_similarity_is_the_cosine_of_the_embed_vectors() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        sentences = ["a cat", "a dog", "stock prices"]
        r = await client.post(
            "/similarity",
            json={"inputs": {"source_sentence": "a kitten", "sentences": sentences}},
        )
        assert r.status_code == 200, r.text
        vectors = np.array(
            (await client.post("/embed", json={"inputs": ["a kitten", *sentences]})).json()
        )
        assert np.allclose(r.json(), vectors[1:] @ vectors[0], atol=1e-5)
        assert all(h in r.headers for h in TIMING)


async def test_decode_inverts_tokenize_and_checks_the_vocabulary() -> None:
    async with running_app(FakeFactory()) as (_app, client):
        tokens = (await client.post("/tokenize", json={"inputs": "hello world"})).json()[0]
        ids = [t["id"] for t in tokens]
        assert (await client.post("/decode", json={"ids": ids})).json() == ["hello world"]
        both = await client.post(
            "/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False}
        )
        assert both.json() == ["[CLS] hello world [SEP]", "hello"]
        bad = await client.post("/decode", json={"ids": [101, 100256]})
        assert bad.status_code == 422
        assert "100256" in bad.json()["error"] and "tiktoken" in bad.json()["error"]


async def test_embed_all_answers_a_vector_per_token_and_424_where_it_cannot(
    tiny_reranker: Path,
) -> None:
    texts = ["hello world", "a somewhat longer input with more tokens"]
    async with running_app(FakeFactory()) as (_app, client):
        tokens = (await client.post("/tokenize", json={"inputs": texts})).json()
        r = await client.post("/embed_all", json={"inputs": texts, "normalize": False})
        assert r.status_code == 200, r.text
        # Ragged: each input has as many vectors as its tokens (special ones included).
        assert [np.array(v).shape for v in r.json()] == [(len(t), 384) for t in tokens]
        assert all(h in r.headers for h in TIMING)
        assert r.headers["x-compute-tokens"] == str(sum(len(t) for t in tokens))
        ids = [t["id"] for t in tokens[0]]
        by_ids = await client.post("/embed_all", json={"inputs": ids})
        assert np.allclose(by_ids.json()[0], r.json()[0])  # a token-id input, used as given
        r = await client.post("/embed_sparse", json={"inputs": "x"})
        assert r.status_code == 424
        assert "needs a SPLADE model" in r.json()["error"] and "mean pooling" in r.json()["error"]
        # Warmed before ready: the per-token output at the shortest shape on CPU.
        assert len((await client.get("/info")).json()["warmup"]["token_shapes"]) == 1
    without = dataclasses.replace(CPU_EXACT, token_outputs=False)
    async with running_app(FakeFactory(capabilities=without)) as (app, client):
        assert app_state(app).engines.stage.value == "ready"  # /embed_all not warmed, no 424
        r = await client.post("/embed_all", json={"inputs": "x"})
        assert r.status_code == 424 and "per-token" in r.json()["error"]
    async with running_app(FakeFactory(), model=[str(tiny_reranker)]) as (_app, client):
        r = await client.post("/embed_all", json={"inputs": "x"})
        assert r.status_code == 424, r.text


async def test_sagemaker_ping_and_invocations_dispatch_on_the_task(tiny_reranker: Path) -> None:
    async with running_app(FakeFactory(), api_key="k") as (_app, client):
        assert (await client.get("/ping")).json()["status"] == "alive"
        auth = {"Authorization": "Bearer k"}
        r = await client.post("/invocations", json={"inputs": ["a", "b"]}, headers=auth)
        assert np.array(r.json()).shape == (2, 384)
        assert all(h in r.headers for h in TIMING)
    async with running_app(FakeFactory(), model=[str(tiny_reranker)]) as (_app, client):
        r = await client.post("/invocations", json={"query": "q", "texts": ["a", "b"]})
        assert sorted(item["index"] for item in r.json()) == [0, 1]


async def test_cohere_v2_rerank_and_embed(three: list[str]) -> None:
    async with running_app(FakeFactory(), model=three) as (_app, client):
        tei = (
            await client.post(
                "/rerank", json={"query": "q", "texts": ["a", "b", "c"], "return_text": True}
            )
        ).json()
        v2 = await client.post(
            "/v2/rerank",
            json={"model": "rr", "query": "q", "documents": ["a", "b", "c"], "top_n": 2},
        )
        assert v2.status_code == 200, v2.text
        body = v2.json()
        assert [r["index"] for r in body["results"]] == [t["index"] for t in tei[:2]]
        assert body["meta"]["billed_units"]["search_units"] == 1 and body["id"]
        as_objects = {"query": "q", "documents": [{"text": t} for t in ("a", "b", "c")]}
        for path in ("/v1/rerank", "/v2/rerank"):
            objects = await client.post(path, json=as_objects | {"return_documents": True})
            assert objects.status_code == 200, (path, objects.text)
            assert objects.json()["results"][0]["document"] == {"text": tei[0]["text"]}

        texts = ["one", "two words", "three more words"]
        types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
        r = await client.post(
            "/v2/embed",
            json={"texts": texts, "input_type": "search_query", "embedding_types": types},
        )
        assert r.status_code == 200, r.text
        emb = r.json()["embeddings"]
        assert set(emb) == set(types) and r.json()["texts"] == texts
        floats = np.array(emb["float"])
        reference = np.array((await client.post("/embed", json={"inputs": texts})).json())
        assert np.allclose(floats, reference, atol=1e-6)
        bits = np.unpackbits(np.array(emb["ubinary"], dtype=np.uint8), axis=1)
        assert (bits.astype(bool) == (floats > 0)).all()
        assert (np.array(emb["binary"]) + 128 == np.array(emb["ubinary"])).all()
        assert (np.array(emb["int8"]) + 128 == np.array(emb["uint8"])).all()
        assert np.array(emb["int8"]).min() >= -128 and np.array(emb["int8"]).max() <= 127


async def test_openai_quantised_encodings_and_calibration_before_ready() -> None:
    async with running_app(FakeFactory()) as (app, client):
        from ember.http.app import app_state

        # The /v2/embed warm-up body asks for int8, so the calibration ran before ready.
        assert app_state(app).calibration
        for kind, dtype in (("int8", np.int8), ("ubinary", np.uint8)):
            r = await client.post(
                "/v1/embeddings", json={"input": ["a", "b"], "encoding_format": kind}
            )
            assert r.status_code == 200, r.text
            rows = [d["embedding"] for d in r.json()["data"]]
            assert np.array(rows).astype(dtype).tolist() == rows
        small = await client.post(
            "/v1/embeddings", json={"input": "a", "encoding_format": "int8", "dimensions": 16}
        )
        assert len(small.json()["data"][0]["embedding"]) == 16


async def test_every_inference_response_carries_teis_timing_headers(three: list[str]) -> None:
    calls = [
        ("/embed", {"inputs": "x", "model": "emb"}),
        ("/v1/embeddings", {"input": "x", "model": "emb"}),
        ("/embeddings", {"input": "x", "model": "emb"}),
        ("/rerank", {"query": "q", "texts": ["a"]}),
        ("/v1/rerank", {"query": "q", "documents": ["a"]}),
        ("/predict", {"inputs": "x"}),
        ("/", {"inputs": "x"}),
    ]
    async with running_app(FakeFactory(), model=three) as (_app, client):
        for path, body in calls:
            r = await client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            assert all(r.headers[h].isdigit() for h in TIMING), path
            assert int(r.headers["x-compute-tokens"]) > 0


async def test_token_ids_are_embedded_as_given_and_checked(tiny_classifier: Path) -> None:
    async with running_app(FakeFactory()) as (_app, client):
        tokens = (await client.post("/tokenize", json={"inputs": ["hello world", "a b"]})).json()
        rows = [[t["id"] for t in row] for row in tokens]
        by_text = (await client.post("/embed", json={"inputs": ["hello world", "a b"]})).json()
        by_ids = await client.post("/embed", json={"inputs": rows})
        assert by_ids.status_code == 200, by_ids.text
        assert np.allclose(by_ids.json(), by_text, atol=1e-6)  # same ids, same vectors
        one = (await client.post("/embed", json={"inputs": rows[0]})).json()
        assert np.allclose(one, by_text[:1], atol=1e-6)
        openai = await client.post("/v1/embeddings", json={"input": rows, "model": None})
        assert np.allclose([d["embedding"] for d in openai.json()["data"]], by_text, atol=1e-6)
        assert openai.json()["usage"]["prompt_tokens"] == sum(map(len, rows))
        # Truncated like text: 300 ids keep the first 128 (or the last, from the left).
        long = [rows[0][1]] * 300
        assert (await client.post("/embed", json={"inputs": long})).status_code == 200
        refused = await client.post("/embed", json={"inputs": long, "truncate": False})
        assert refused.status_code == 422
        # langchain-openai's default: cl100k ids from tiktoken, outside a WordPiece vocabulary.
        tiktoken = await client.post("/v1/embeddings", json={"input": [[9906, 1917, 100255]]})
        assert tiktoken.status_code == 422
        message = tiktoken.json()["error"]["message"]
        assert "100255" in message and "check_embedding_ctx_length=False" in message
    async with running_app(FakeFactory(), model=[str(tiny_classifier)]) as (_app, client):
        ids = [101, 7592, 102]
        one = (await client.post("/predict", json={"inputs": ids})).json()
        assert {p["label"] for p in one} == {"negative", "neutral", "positive"}
        many = (await client.post("/predict", json={"inputs": [ids, ids]})).json()
        assert len(many) == 2 and many[0] == one


async def test_embed_all_answers_are_bounded_by_the_queue_work() -> None:
    """A token of /embed_all answers 384 floats here: 24 tokens of work. Past the queue bound
    on its own, the request is a 413 saying how many tokens fit (waiting would not help)."""
    async with running_app(FakeFactory(), max_queued_tokens=2400) as (_app, client):
        fits = await client.post("/embed_all", json={"inputs": [[101] + [2000] * 98]})
        assert fits.status_code == 200, fits.text
        r = await client.post("/embed_all", json={"inputs": [[101] + [2000] * 100]})
        assert r.status_code == 413 and "at most 100 per request" in r.json()["error"]
        assert (await client.post("/embed", json={"inputs": [[101] + [2000] * 100]})).is_success
