"""Request and response bodies, in the order of the APIs they mirror.

- TEI: https://huggingface.github.io/text-embeddings-inference/ (openapi.json)
- OpenAI embeddings: https://platform.openai.com/docs/api-reference/embeddings
- The `/v1/rerank` shape RAG frameworks send (Cohere / Jina style).

Requests are pydantic models (validated); responses are TypedDicts: routes build them as plain
dicts of numpy arrays for orjson (no per-float Python objects), and FastAPI documents them in
the OpenAPI schema from the same types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypedDict

_TEXT = Annotated[str, Field(description="A text")]


class _Strict(BaseModel):
    """Unknown fields are a 422, so a typo never silently changes behaviour."""

    model_config = ConfigDict(extra="forbid")


def _lower_direction(value: object) -> object:
    # TEI's own clients send "Right"/"Left" (its Rust enum), others send lower case.
    return value.lower() if isinstance(value, str) else value


# --- TEI ---------------------------------------------------------------------------------


class EmbedRequest(_Strict):
    inputs: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="A text or a list of texts"
    )
    normalize: bool = Field(default=True, description="Scale each vector to unit length")
    truncate: bool | None = Field(
        default=None, description="Truncate inputs over the max length (default: server's)"
    )
    truncation_direction: Literal["right", "left"] = "right"
    dimensions: int | None = Field(
        default=None, ge=1, description="Keep the first N dimensions (Matryoshka)"
    )
    prompt_name: str | None = Field(default=None, description="A prompt of the model's config")
    model: str | None = Field(default=None, description="Served model name (several served)")

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class RerankRequest(_Strict):
    query: str
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"
    model: str | None = None

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class RankItem(TypedDict):
    index: int
    score: float
    text: NotRequired[str]


PredictInput = str | list[str] | list[list[str]]


class PredictRequest(_Strict):
    inputs: PredictInput = Field(description="A text, a pair [a, b], or a list of texts or pairs")
    raw_scores: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"
    model: str | None = None

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class Prediction(TypedDict):
    label: str
    score: float


class TokenizeRequest(_Strict):
    inputs: str | Annotated[list[str], Field(min_length=1)]
    add_special_tokens: bool = True
    model: str | None = None


class SimpleToken(TypedDict):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class ErrorBody(TypedDict):
    error: str
    error_type: str


class ModelType(TypedDict, total=False):
    """TEI's `model_type`: one key, `embedding` (pooling) or `classifier`/`reranker` (labels)."""

    embedding: dict[str, Any]
    classifier: dict[str, Any]
    reranker: dict[str, Any]


# --- OpenAI ------------------------------------------------------------------------------


class EmbeddingsRequest(_Strict):
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="A text or a list of texts"
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingObject(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(TypedDict):
    object: Literal["list"]
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(TypedDict):
    error: OpenAIErrorDetail


# --- /v1/rerank (Cohere / Jina style) ------------------------------------------------------


class V1RerankRequest(_Strict):
    query: str
    documents: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    raw_scores: bool = False
    truncate: bool | None = None


class V1RerankDocument(TypedDict):
    text: str


class V1RerankResult(TypedDict):
    index: int
    relevance_score: float
    document: NotRequired[V1RerankDocument]


class RerankUsage(TypedDict):
    total_tokens: int


class V1RerankResponse(TypedDict):
    model: str
    results: list[V1RerankResult]
    usage: RerankUsage


# --- probes and info ---------------------------------------------------------------------


class Health(TypedDict):
    status: Literal["alive"]
    stage: str


class Readiness(TypedDict):
    status: str
    error: NotRequired[str]
    models: list[dict[str, Any]]
    uptime_seconds: float
    ready_seconds: NotRequired[float | None]
    warmup: NotRequired[list[dict[str, Any]]]
