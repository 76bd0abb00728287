"""No request body can make a route answer 5xx: per route, hypothesis generates bodies over
every field with edge values (option combinations, lengths 1 to past the max, unicode with lone
surrogates, token ids in and out of the vocabulary, wrong types), and after each the next
request is served. In-process (Starlette's TestClient raises if the app lets an exception out),
the fake backend, three models (embed, rerank, classify)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ember.http.app import create_app
from ember.settings import Settings
from tests.conftest import FAST
from tests.fakes import FakeFactory

# Every character class, lone surrogates included (valid JSON escapes, not encodable text).
CHARS = st.one_of(st.characters(), st.characters(categories=["Cs"]))
TEXT = st.one_of(
    st.text(CHARS, min_size=1, max_size=40),
    st.text(CHARS, min_size=300, max_size=700),  # past the 128-token cap of FAST
    st.sampled_from(["", " ", "hello world", "word " * 200, "lone \ud800 surrogate", "\udfff"]),
)
IDS = st.lists(st.integers(-3, 200_000), max_size=200) | st.lists(
    st.integers(0, 30_521), min_size=1, max_size=200
)
JUNK = st.sampled_from([None, "", "x", 0, -1, 1.5, True, [], {}, [None], {"a": 1}])
# Texts weigh most (each branch is drawn alike): they reach the tokenizer and the model.
TEXTS = st.one_of(
    TEXT,
    TEXT,
    st.lists(TEXT, min_size=1, max_size=12),
    st.lists(TEXT, max_size=12),
    IDS,
    st.lists(IDS, max_size=4),
    st.lists(st.lists(TEXT, max_size=3), max_size=4),  # pairs, triples
    JUNK,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid three times in four (branches are drawn alike), else a wrong type: bodies must
    get past validation often enough to reach the tokenizer and the model."""
    return st.one_of(valid, valid, valid, JUNK)


BOOL = mostly(st.booleans())
INT = mostly(st.one_of(st.integers(-2, 3000), st.sampled_from([0, 1, 8, 383, 384, 385])))
DIRECTION = mostly(st.sampled_from(["right", "left", "Right", "LEFT", "middle"]))
MODEL = mostly(st.sampled_from(["emb", "rr", "cls", "nope", ""]))
KINDS = ["float", "base64", "int8", "uint8", "binary", "ubinary"]
KIND = mostly(st.sampled_from([*KINDS, "int4"]))
EXTRA = st.dictionaries(st.sampled_from(["parameters", "top_k", "input_type", "x"]), JUNK)


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A dict with the required fields, any subset of the optional ones and unknown extras;
    sometimes not a dict at all."""
    fields = st.fixed_dictionaries(dict(required), optional=dict(optional))
    well_formed = st.builds(lambda f, e: {**e, **f}, fields, EXTRA)
    return st.one_of(
        well_formed,
        well_formed,
        well_formed,
        JUNK,
        st.fixed_dictionaries({}, optional=dict(required)),  # required fields missing
    )


EMBED_OPTIONS = {
    "normalize": BOOL,
    "truncate": BOOL,
    "truncation_direction": DIRECTION,
    "dimensions": INT,
    "prompt_name": st.one_of(st.sampled_from(["query", "nope"]), JUNK),
    "model": MODEL,
}
EMBED = body({"inputs": TEXTS}, EMBED_OPTIONS)
RERANK = body(
    {"query": st.one_of(TEXT, JUNK), "texts": TEXTS},
    {
        "raw_scores": BOOL,
        "return_text": BOOL,
        "truncate": BOOL,
        "truncation_direction": DIRECTION,
        "model": MODEL,
    },
)
OPENAI = body(
    {"input": TEXTS},
    {"model": MODEL, "encoding_format": KIND, "dimensions": INT, "user": st.one_of(TEXT, JUNK)},
)
ROUTES: dict[str, st.SearchStrategy[Any]] = {
    "/embed": EMBED,
    "/embed_all": EMBED,
    "/embed_sparse": EMBED,
    "/": EMBED,
    "/invocations": EMBED,
    "/rerank": RERANK,
    "/predict": body(
        {"inputs": TEXTS},
        {"raw_scores": BOOL, "truncate": BOOL, "truncation_direction": DIRECTION, "model": MODEL},
    ),
    "/tokenize": body({"inputs": TEXTS}, {"add_special_tokens": BOOL, "model": MODEL}),
    "/decode": body(
        {"ids": st.one_of(IDS, st.lists(IDS, max_size=3), JUNK)},
        {"skip_special_tokens": BOOL, "model": MODEL},
    ),
    "/similarity": body(
        {
            "inputs": st.one_of(
                body({"source_sentence": st.one_of(TEXT, JUNK), "sentences": TEXTS}, {}), JUNK
            )
        },
        {
            "parameters": st.one_of(
                body(
                    {}, {"prompt_name": JUNK, "truncate": BOOL, "truncation_direction": DIRECTION}
                ),
                JUNK,
            ),
            "model": MODEL,
        },
    ),
    "/v1/embeddings": OPENAI,
    "/embeddings": OPENAI,
    "/v1/rerank": body(
        {"query": st.one_of(TEXT, JUNK), "documents": TEXTS},
        {
            "model": MODEL,
            "top_n": INT,
            "return_documents": BOOL,
            "raw_scores": BOOL,
            "truncate": BOOL,
        },
    ),
    "/v2/rerank": body(
        {"query": st.one_of(TEXT, JUNK), "documents": TEXTS},
        {"model": MODEL, "top_n": INT, "return_documents": BOOL, "max_tokens_per_doc": INT},
    ),
    "/v2/embed": body(
        {"texts": TEXTS},
        {
            "model": MODEL,
            "input_type": st.one_of(st.sampled_from(["search_query"]), JUNK),
            "embedding_types": st.one_of(st.lists(KIND, max_size=7), JUNK),
            "truncate": st.one_of(st.sampled_from(["NONE", "START", "END", "end"]), JUNK),
            "output_dimension": INT,
        },
    ),
}
STEADY = ("/embed", {"inputs": "steady", "model": "emb"})

# Edge values every route sees whatever the generator draws: each text field of a valid body
# set in turn to each of these.
EDGES: list[Any] = [
    "lone \ud800 surrogate",
    ["ok", "\udfff"],
    [["pair", "\ud83d"]],
    "word " * 600,
    [101, 999_999],
    [[101, 2023, 102], [100_256]],
    [],
    "",
]
VALID: dict[str, dict[str, Any]] = {
    "/rerank": {"query": "q", "texts": ["a"]},
    "/v1/rerank": {"query": "q", "documents": ["a"]},
    "/v2/rerank": {"query": "q", "documents": ["a"]},
    "/v2/embed": {"texts": ["a"]},
    "/v1/embeddings": {"input": "a"},
    "/embeddings": {"input": "a"},
    "/decode": {"ids": [101]},
    "/similarity": {"inputs": {"source_sentence": "a", "sentences": ["b"]}},
}


def edge_bodies(path: str) -> list[Any]:
    valid = VALID.get(path, {"inputs": "a"})
    out = []
    for field, value in valid.items():
        for edge in EDGES:
            if isinstance(value, dict):  # /similarity: its inner texts
                out += [{**valid, field: {**value, inner: edge}} for inner in value]
            else:
                out.append({**valid, field: edge})
    return out


@pytest.fixture(scope="module")
def client(tiny_embedder: Path, tiny_reranker: Path, tiny_classifier: Path) -> Iterator[TestClient]:
    models = [f"emb={tiny_embedder}", f"rr={tiny_reranker}", f"cls={tiny_classifier}"]
    app = create_app(Settings(**FAST, model=models), backend_factory=FakeFactory())
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/ready").text
            time.sleep(0.05)
        yield test_client


def post(client: TestClient, path: str, payload: Any) -> int:
    # Serialised here with ASCII escapes: a lone surrogate must reach the server as `\ud800`.
    raw = json.dumps(payload).encode()
    return client.post(path, content=raw, headers={"content-type": "application/json"}).status_code


@pytest.mark.parametrize("path", list(ROUTES))
def test_no_body_makes_a_route_answer_5xx(client: TestClient, path: str) -> None:
    @given(payload=ROUTES[path])
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(payload: Any) -> None:
        status = post(client, path, payload)
        assert status < 500, (path, payload, status)
        assert post(client, *STEADY) == 200

    for edge in edge_bodies(path):
        check = example(payload=edge)(check)
    check()
