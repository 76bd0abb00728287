"""What the one closed loop (`bench.load`) sends: a workload builds each request and knows how
to check its answer (Locust's user classes, `vllm bench`'s datasets).

A workload's `request(rng)` returns the route, a fresh body (new texts every call, so no cache
can help), how many items a good answer holds, and the function that counts them in a 200 body
(ValueError, KeyError or TypeError when the body has another shape). Embed, rerank, classify and
any weighted mix of them are workloads; so is a soak's mix built from what `/info` serves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ember.bench.client import DEFAULT_EMBED_PATHS, Api, build_body, count_embeddings, make_text

RerankShape = Literal["tei", "cohere"]
"""TEI `/rerank` (`texts`, a list of {index, score}) or Cohere-style `/v1/rerank` (`documents`,
`results[]` of {index, relevance_score}; Infinity's `/rerank` too)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a workload and how to judge its answer."""

    kind: str
    path: str
    body: bytes
    expect: int
    """Items (vectors, scores, predictions) a 200 answer must hold."""
    count: Callable[[bytes], int]


class Workload(Protocol):
    """Builds requests; `describe` is what the result document records about it."""

    def request(self, rng: random.Random) -> Request: ...

    def describe(self) -> dict[str, Any]: ...


def check(request: Request, body: bytes) -> bool:
    """Whether a 200 body answers `request` with the expected number of well-formed items."""
    try:
        return request.count(body) == request.expect
    except (ValueError, KeyError, TypeError, IndexError):
        return False


@dataclass(frozen=True, slots=True)
class Embed:
    """`batch` texts of `words` words to TEI `/embed` or OpenAI `/v1/embeddings`."""

    api: Api = "tei"
    batch: int = 1
    words: int = 40
    model: str | None = None
    path: str | None = None

    def request(self, rng: random.Random) -> Request:
        texts = [make_text(rng, self.words) for _ in range(self.batch)]
        return Request(
            kind="embed",
            path=self.path or DEFAULT_EMBED_PATHS[self.api],
            body=build_body(self.api, texts, model=self.model),
            expect=self.batch,
            count=self._count,
        )

    def _count(self, body: bytes) -> int:
        return count_embeddings(self.api, body)

    def describe(self) -> dict[str, Any]:
        return {"kind": "embed", "api": self.api, "batch": self.batch, "words": self.words}


def rerank_body(shape: RerankShape, query: str, docs: list[str], *, raw: bool = False) -> bytes:
    """A TEI or Cohere-style rerank body."""
    payload: dict[str, Any] = {"query": query, "texts" if shape == "tei" else "documents": docs}
    if raw:
        payload["raw_scores"] = True
    return orjson.dumps(payload)


def parse_rerank(shape: RerankShape, body: bytes) -> dict[int, float]:
    """index → score of a rerank answer; ValueError if it has another shape."""
    parsed = orjson.loads(body)
    if shape == "tei":
        if not isinstance(parsed, list):
            raise ValueError("TEI rerank response is not a list")
        return {int(item["index"]): float(item["score"]) for item in parsed}
    results = parsed.get("results") if isinstance(parsed, dict) else None
    if not isinstance(results, list):
        raise ValueError("rerank response has no results[]")
    return {int(item["index"]): float(item["relevance_score"]) for item in results}


@dataclass(frozen=True, slots=True)
class Rerank:
    """One query of `query_words` words against `docs` documents of `words` words."""

    shape: RerankShape = "tei"
    docs: int = 32
    words: int = 60
    query_words: int = 10
    path: str = "/rerank"

    def request(self, rng: random.Random) -> Request:
        query = make_text(rng, self.query_words)
        docs = [make_text(rng, self.words) for _ in range(self.docs)]
        return Request(
            kind="rerank",
            path=self.path,
            body=rerank_body(self.shape, query, docs),
            expect=self.docs,
            count=self._count,
        )

    def _count(self, body: bytes) -> int:
        return len(parse_rerank(self.shape, body))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "rerank",
            "shape": self.shape,
            "docs": self.docs,
            "words": self.words,
            "query_words": self.query_words,
        }


def predict_body(texts: list[str], *, raw: bool = False) -> bytes:
    """A TEI `/predict` body: one text, or a list of several (never 2: TEI reads that as a pair)."""
    payload: dict[str, Any] = {"inputs": texts[0] if len(texts) == 1 else texts}
    if raw:
        payload["raw_scores"] = True
    return orjson.dumps(payload)


def parse_predict(body: bytes, n: int) -> list[dict[str, float]]:
    """Per input label → score of a TEI `/predict` answer for `n` inputs."""
    parsed = orjson.loads(body)
    rows = [parsed] if n == 1 else parsed
    if not isinstance(rows, list) or len(rows) != n:
        raise ValueError("predict response has the wrong number of inputs")
    return [{str(p["label"]): float(p["score"]) for p in row} for row in rows]


@dataclass(frozen=True, slots=True)
class Classify:
    """`texts` texts of `words` words to TEI `/predict`."""

    texts: int = 1
    words: int = 20
    path: str = "/predict"

    def request(self, rng: random.Random) -> Request:
        texts = [make_text(rng, self.words) for _ in range(self.texts)]
        return Request(
            kind="classify",
            path=self.path,
            body=predict_body(texts),
            expect=self.texts,
            count=self._count,
        )

    def _count(self, body: bytes) -> int:
        return len(parse_predict(body, self.texts))

    def describe(self) -> dict[str, Any]:
        return {"kind": "classify", "texts": self.texts, "words": self.words}


@dataclass(frozen=True, slots=True)
class Custom:
    """A workload from two functions: rng → (body, items expected), and the item counter."""

    kind: str
    path: str
    build: Callable[[random.Random], tuple[bytes, int]]
    count: Callable[[bytes], int]

    def request(self, rng: random.Random) -> Request:
        body, expect = self.build(rng)
        return Request(self.kind, self.path, body, expect, self.count)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True, slots=True)
class Mixed:
    """Each request drawn from one of `parts`, in proportion to its weight."""

    parts: Sequence[tuple[float, Workload]]
    _weights: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.parts or any(weight <= 0 for weight, _ in self.parts):
            raise ValueError("a mixed workload needs parts with positive weights")
        object.__setattr__(self, "_weights", [weight for weight, _ in self.parts])

    def request(self, rng: random.Random) -> Request:
        (part,) = rng.choices([w for _, w in self.parts], self._weights)
        return part.request(rng)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "mixed",
            "parts": [{"weight": w, **part.describe()} for w, part in self.parts],
        }
