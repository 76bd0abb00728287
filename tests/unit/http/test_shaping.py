"""Response shaping, without an app: arrays and options in, API bodies out."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from ember.engine.tokenizer import check_ids
from ember.errors import InvalidInput, TooLarge
from ember.http import shaping
from ember.models import Task


def test_as_list_wraps_a_text_and_bounds_the_count() -> None:
    assert shaping.as_list("a", limit=1) == ["a"]
    with pytest.raises(InvalidInput):
        shaping.as_list([], limit=4)
    with pytest.raises(TooLarge, match="3 inputs"):
        shaping.as_list(["a", "b", "c"], limit=2)


def test_predict_items_follow_tei_rules() -> None:
    assert shaping.predict_items("a", limit=8) == (["a"], False)
    assert shaping.predict_items(["a", "b"], limit=8) == ([("a", "b")], False)
    assert shaping.predict_items(["a", "b", "c"], limit=8) == (["a", "b", "c"], True)
    assert shaping.predict_items([["a", "b"], ["c"]], limit=8) == ([("a", "b"), "c"], True)
    with pytest.raises(InvalidInput):
        shaping.predict_items([["a", "b", "c"]], limit=8)


def test_ranked_is_best_first_and_stable_on_ties() -> None:
    scores = np.array([0.2, 0.9, 0.2], dtype=np.float32)
    items = shaping.ranked(scores, ["x", "y", "z"], return_text=True)
    assert [i["index"] for i in items] == [1, 0, 2]
    assert items[0]["text"] == "y"
    assert "text" not in shaping.ranked(scores, ["x", "y", "z"], return_text=False)[0]


def test_predictions_list_every_label_best_first() -> None:
    rows = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    out = shaping.predictions(rows, ["a", "b", "c"])
    assert [p["label"] for p in out[0]] == ["b", "c", "a"]


def test_a_column_slice_serialises() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)[:, :2]
    assert not rows.flags.c_contiguous
    body = shaping.JSON(shaping.embeddings(rows)).body
    assert orjson.loads(body) == [[0, 1], [4, 5], [8, 9]]


def test_openai_base64_is_little_endian_float32() -> None:
    rows = np.array([[1.5, -2.0]], dtype=np.float32)
    b64 = shaping.encoded(rows, "base64", bounds=None)
    body = shaping.openai_embeddings(b64, model="m", tokens=3)
    embedding = body["data"][0]["embedding"]
    assert isinstance(embedding, str)
    assert np.frombuffer(base64.b64decode(embedding), "<f4").tolist() == [1.5, -2.0]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    floats = shaping.openai_embeddings(
        shaping.encoded(rows, "float", bounds=None), model="m", tokens=3
    )
    assert orjson.loads(shaping.JSON(floats).body)["data"][0]["embedding"] == [1.5, -2.0]


def test_timing_headers_are_teis_integer_milliseconds() -> None:
    timings = {"tokenize": 0.0021, "queue": 0.0005, "inference": 0.0105, "total": 0.0139}
    headers = shaping.timing_headers(timings, tokens=12, chars=40)
    assert headers == {
        "x-compute-time": "13",
        "x-total-time": "13",
        "x-tokenization-time": "2",
        "x-queue-time": "0",
        "x-inference-time": "10",
        "x-compute-tokens": "12",
        "x-compute-characters": "40",
    }
    assert shaping.characters(["ab", ("c", "de")]) == 5


def test_similarities_are_cosines_to_the_first_row() -> None:
    rows = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    assert shaping.similarities(rows) == pytest.approx([0.0, 0.6])


def test_check_ids_names_the_first_bad_id_and_spots_tiktoken() -> None:
    check_ids([[0, 5, 99]], vocab=100)
    with pytest.raises(InvalidInput, match="position 1: token id 100 ") as bert:
        check_ids([[1, 100, 200]], vocab=100)
    assert "tiktoken" in bert.value.message
    with pytest.raises(InvalidInput, match="check_embedding_ctx_length=False"):
        check_ids([[1, 2], [3, 100256]], vocab=30522)
    with pytest.raises(InvalidInput, match="-1"):
        check_ids([[-1]], vocab=30522)
    with pytest.raises(InvalidInput, match="empty"):
        check_ids([[]], vocab=30522)
    assert shaping.id_rows([1, 2]) == [[1, 2]]
    assert shaping.id_rows([[1], [2, 3]]) == [[1], [2, 3]]


def test_cohere_shapes() -> None:
    items = shaping.ranked(np.array([0.1, 0.8], dtype=np.float32), ["a", "b"], return_text=False)
    rr = shaping.cohere_rerank(items, ["a", "b"], top_n=None, return_documents=False, tokens=4)
    assert [r["index"] for r in rr["results"]] == [1, 0] and rr["id"]
    assert rr["meta"]["api_version"] == {"version": "2"}
    rows = np.ones((1, 8), dtype=np.float32)
    by_type = {"ubinary": shaping.encoded(rows, "ubinary", bounds=None)}
    emb = orjson.loads(shaping.JSON(shaping.cohere_embed(by_type, ["t"], tokens=2)).body)
    assert emb["embeddings"] == {"ubinary": [[255]]}
    assert emb["response_type"] == "embeddings_by_type" and emb["texts"] == ["t"]


def test_v1_rerank_cuts_at_top_n_and_returns_documents() -> None:
    items = shaping.ranked(np.array([0.1, 0.8], dtype=np.float32), ["a", "b"], return_text=False)
    body = shaping.v1_rerank(items, ["a", "b"], top_n=1, return_documents=True, model="m", tokens=9)
    assert body["results"] == [
        {"index": 1, "relevance_score": pytest.approx(0.8), "document": {"text": "b"}}
    ]
    assert body["usage"] == {"total_tokens": 9}


def test_model_type_names_the_task() -> None:
    assert shaping.model_type(Task.EMBED, pooling="mean", labels=[]) == {
        "embedding": {"pooling": "mean"}
    }
    reranker = shaping.model_type(Task.RERANK, pooling=None, labels=["score"])
    assert reranker == {"reranker": {"id2label": {0: "score"}, "label2id": {"score": 0}}}


def test_model_list() -> None:
    body = shaping.model_list([("m", Task.RERANK)], created=5)
    assert body["data"] == [
        {"id": "m", "object": "model", "created": 5, "owned_by": "ember", "task": "rerank"}
    ]


def test_sparse_answers_non_zero_entries_in_tei_shape() -> None:
    rows = np.array([[0.0, 1.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert shaping.sparse(rows) == [[{"index": 1, "value": 1.5}, {"index": 3, "value": 0.25}], []]


def test_token_vectors_are_ragged_float_lists() -> None:
    """/embed_all: per input, one list per token (each input its own length), from arrays that
    may be views into a padded batch."""
    batch = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    body = orjson.loads(shaping.JSON(shaping.token_vectors([batch[0, :4], batch[1, :2]])).body)
    assert [len(tokens) for tokens in body] == [4, 2]
    assert body[1] == batch[1, :2].tolist()
