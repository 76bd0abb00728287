"""The one route table: every path ember serves, its API family, task, access and warm-up.

The middleware (open paths, route → task for metrics, which requests to track), `metrics`
(the series primed before the first request), the error shape (OpenAI's or TEI's) and the HTTP
warm-up (`app.warm_http`) all read this table, so a new route is one line here plus its handler.
A unit test checks that the app serves exactly these paths and methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.models import Task

Family = Literal["probes", "operations", "tei", "openai", "cohere", "sagemaker"]
Access = Literal["key", "open", "metrics"]
"""`key`: needs the API key when one is set; `open`: never; `metrics`: open if --metrics-public."""

WARM_SHORT = "warm"
WARM_MEDIUM = "the quick brown fox jumps over the lazy dog"
_PAIR = [WARM_SHORT, WARM_MEDIUM]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One path: its methods, the API it mirrors and what the server does for it."""

    path: str
    methods: tuple[str, ...] = ("POST",)
    family: Family
    task: Task | None = None
    """The task the route serves; None for probes and for routes that dispatch on the model."""
    inference: bool = False
    """Counted in `ember_requests` and cancelled when its client leaves."""
    access: Access = "key"
    warm: tuple[Mapping[str, Any], ...] = field(default=())
    """Bodies the HTTP warm-up sends (with `model` set) for each served model of `task`."""


HEALTH = Route(path="/health", methods=("GET", "HEAD"), family="probes", access="open")
ROOT_HEALTH = Route(path="/", methods=("GET", "HEAD"), family="probes", access="open")
"""TEI's "Inference API health route": `GET /` answers as `/health`."""
READY = Route(path="/ready", methods=("GET", "HEAD"), family="probes", access="open")
METRICS = Route(path="/metrics", methods=("GET",), family="operations", access="metrics")

INFO = Route(path="/info", methods=("GET",), family="tei")
EMBED = Route(
    path="/embed",
    family="tei",
    task=Task.EMBED,
    inference=True,
    warm=({"inputs": WARM_SHORT}, {"inputs": _PAIR}),
)
RERANK = Route(
    path="/rerank",
    family="tei",
    task=Task.RERANK,
    inference=True,
    warm=({"query": WARM_SHORT, "texts": _PAIR},),
)
PREDICT = Route(
    path="/predict",
    family="tei",
    task=Task.CLASSIFY,
    inference=True,
    warm=({"inputs": WARM_SHORT}, {"inputs": _PAIR}),
)
ROOT = Route(path="/", family="tei", inference=True)
TOKENIZE = Route(path="/tokenize", family="tei", inference=True)
DECODE = Route(path="/decode", family="tei", inference=True)
SIMILARITY = Route(
    path="/similarity",
    family="tei",
    task=Task.EMBED,
    inference=True,
    warm=({"inputs": {"source_sentence": WARM_SHORT, "sentences": _PAIR}},),
)
EMBED_ALL = Route(
    path="/embed_all",
    family="tei",
    task=Task.EMBED,
    inference=True,
    warm=({"inputs": WARM_SHORT}, {"inputs": _PAIR}),
)
EMBED_SPARSE = Route(
    path="/embed_sparse",
    family="tei",
    task=Task.EMBED,
    inference=True,
    warm=({"inputs": WARM_SHORT}, {"inputs": _PAIR}),
)

V1_EMBEDDINGS = Route(
    path="/v1/embeddings",
    family="openai",
    task=Task.EMBED,
    inference=True,
    warm=({"input": _PAIR}, {"input": WARM_SHORT, "encoding_format": "base64"}),
)
EMBEDDINGS = Route(path="/embeddings", family="openai", task=Task.EMBED, inference=True)
"""OpenAI without `/v1` (TEI serves it; litellm's `infinity/` provider sends it)."""
V1_MODELS = Route(path="/v1/models", methods=("GET",), family="openai")

V1_RERANK = Route(
    path="/v1/rerank",
    family="cohere",
    task=Task.RERANK,
    inference=True,
    warm=({"query": WARM_SHORT, "documents": _PAIR},),
)
V2_RERANK = Route(
    path="/v2/rerank",
    family="cohere",
    task=Task.RERANK,
    inference=True,
    warm=({"query": WARM_SHORT, "documents": _PAIR, "top_n": 1},),
)
V2_EMBED = Route(
    path="/v2/embed",
    family="cohere",
    task=Task.EMBED,
    inference=True,
    # Every embedding type: the int8/uint8 calibration then runs before ready, not on a user.
    warm=(
        {
            "texts": _PAIR,
            "input_type": "search_document",
            "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"],
        },
    ),
)

PING = Route(path="/ping", methods=("GET",), family="sagemaker", access="open")
INVOCATIONS = Route(path="/invocations", family="sagemaker", inference=True)
"""SageMaker's inference path: dispatches on the model's task like `POST /`."""

ROUTES: tuple[Route, ...] = (
    HEALTH,
    ROOT_HEALTH,
    READY,
    METRICS,
    INFO,
    EMBED,
    RERANK,
    PREDICT,
    ROOT,
    TOKENIZE,
    DECODE,
    SIMILARITY,
    EMBED_ALL,
    EMBED_SPARSE,
    V1_EMBEDDINGS,
    EMBEDDINGS,
    V1_MODELS,
    V1_RERANK,
    V2_RERANK,
    V2_EMBED,
    PING,
    INVOCATIONS,
)
_FAMILY: dict[str, Family] = {r.path: r.family for r in ROUTES if r.family != "probes"}


def open_routes(*, metrics_public: bool) -> frozenset[tuple[str, str]]:
    """(method, path) pairs answered without the API key (`GET /` is open, `POST /` is not)."""
    allowed: tuple[Access, ...] = ("open", "metrics") if metrics_public else ("open",)
    return frozenset((m, r.path) for r in ROUTES if r.access in allowed for m in r.methods)


def route_tasks(*, default: Task = Task.EMBED) -> dict[str, str]:
    """The task label of each inference route; routes that dispatch get `default`."""
    return {r.path: (r.task or default).value for r in ROUTES if r.inference}


def openai_shaped(path: str) -> bool:
    """Whether errors on `path` use OpenAI's error object (its routes and any other /v1/ path)."""
    return _FAMILY.get(path) == "openai" or path.startswith("/v1/")


def warm_calls(
    task: Task, model: str, *, sparse: bool = False, per_token: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """(path, body) for every warm-up request of a model serving `task`; a SPLADE (`sparse`)
    model warms `/embed_sparse` only (its normalising embed routes answer 424, as TEI's), and
    `/embed_all` is warmed only where the backend gives `per_token` vectors (else a 424)."""
    if sparse:
        routes = [EMBED_SPARSE]
    else:
        skip = {EMBED_SPARSE.path} | (set() if per_token else {EMBED_ALL.path})
        routes = [r for r in ROUTES if r.task is task and r.path not in skip]
    return [(r.path, {**body, "model": model}) for r in routes for body in r.warm]
