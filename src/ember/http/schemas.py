"""Request and response bodies, in the order of the APIs they mirror.

- TEI: https://huggingface.github.io/text-embeddings-inference/ (openapi.json)
- OpenAI embeddings: https://platform.openai.com/docs/api-reference/embeddings
- The `/v1/rerank` shape RAG frameworks send (Cohere / Jina style).

Requests are pydantic models (validated); responses are TypedDicts: routes build them as plain
dicts of numpy arrays for orjson (no per-float Python objects), and FastAPI documents them in
the OpenAPI schema from the same types.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict

from ember.http.quantize import EmbeddingType

_TEXT = Annotated[str, Field(description="A text")]
TextsOrIds = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)
"""A text, texts, one list of token ids or several (OpenAI's and TEI's input forms)."""


log = logging.getLogger("ember.http")


class _Request(BaseModel):
    """Unknown fields are ignored (logged at debug), as TEI and OpenAI do: clients send their
    own extras (huggingface_hub `parameters`, litellm `input_type`). Known fields keep their
    types: a wrong type is still a 422."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown(self) -> _Request:
        if self.model_extra:
            log.debug(
                "%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra)
            )
        return self


def _lower_direction(value: object) -> object:
    # TEI's own clients send "Right"/"Left" (its Rust enum), others send lower case.
    return value.lower() if isinstance(value, str) else value


# --- TEI ---------------------------------------------------------------------------------


class EmbedRequest(_Request):
    inputs: TextsOrIds = Field(description="A text, texts, token ids or lists of token ids")
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


class EmbedAllRequest(_Request):
    """TEI's `EmbedAllRequest`: no `normalize` or `dimensions` (the vectors are raw hidden
    states); sent anyway, they are ignored like any unknown field, as TEI does."""

    inputs: TextsOrIds = Field(description="A text, texts, token ids or lists of token ids")
    truncate: bool | None = Field(
        default=None, description="Truncate inputs over the max length (default: server's)"
    )
    truncation_direction: Literal["right", "left"] = "right"
    prompt_name: str | None = Field(default=None, description="A prompt of the model's config")
    model: str | None = Field(default=None, description="Served model name (several served)")

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class RerankRequest(_Request):
    query: str
    texts: Annotated[list[str], Field(min_length=1)]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"
    model: str | None = None

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class SparseValue(TypedDict):
    """One non-zero entry of a SPLADE vector (TEI's `SparseValue`)."""

    index: int
    value: float


class RankItem(TypedDict):
    index: int
    score: float
    text: NotRequired[str]


PredictTexts = str | list[str] | list[list[str]]
PredictInput = PredictTexts | list[int] | list[list[int]]


class PredictRequest(_Request):
    inputs: PredictInput = Field(
        description="A text, a pair [a, b], a list of texts or pairs, or token ids"
    )
    raw_scores: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"
    model: str | None = None

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class Prediction(TypedDict):
    label: str
    score: float


class TokenizeRequest(_Request):
    inputs: str | Annotated[list[str], Field(min_length=1)]
    add_special_tokens: bool = True
    model: str | None = None


class SimpleToken(TypedDict):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class DecodeRequest(_Request):
    ids: list[int] | Annotated[list[list[int]], Field(min_length=1)] = Field(
        description="Token ids, or a list of token-id lists"
    )
    skip_special_tokens: bool = True
    model: str | None = None


class SimilarityInput(BaseModel):
    source_sentence: str
    sentences: Annotated[list[str], Field(min_length=1)]


class SimilarityParameters(BaseModel):
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class SimilarityRequest(_Request):
    """huggingface_hub's `sentence_similarity` body: cosine of each sentence to the source."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: str | None = None


class ErrorBody(TypedDict):
    error: str
    error_type: str


class ModelType(TypedDict, total=False):
    """TEI's `model_type`: one key, `embedding` (pooling) or `classifier`/`reranker` (labels)."""

    embedding: dict[str, Any]
    classifier: dict[str, Any]
    reranker: dict[str, Any]


# --- OpenAI ------------------------------------------------------------------------------


class EmbeddingsRequest(_Request):
    input: TextsOrIds = Field(description="A text, texts, token ids or lists of token ids")
    model: str | None = None
    encoding_format: EmbeddingType = Field(
        default="float",
        description="float, base64 (float32 bytes), or quantised: int8, uint8, binary, ubinary",
    )
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("encoding_format", mode="before")
    @classmethod
    def _null_is_float(cls, value: object) -> object:
        # litellm sends `"encoding_format": null` on purpose (so the openai SDK adds no
        # base64); OpenAI answers it with floats.
        return "float" if value is None else value


class EmbeddingObject(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | list[int] | str


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


def _document_texts(value: object) -> object:
    # Cohere (v1, and litellm's `cohere/`) also sends documents as objects: {"text": ...}.
    if isinstance(value, list):
        return [d["text"] if isinstance(d, dict) and "text" in d else d for d in value]
    return value


class V1RerankRequest(_Request):
    query: str
    documents: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    raw_scores: bool = False
    truncate: bool | None = None

    _documents = field_validator("documents", mode="before")(_document_texts)


class V1RerankDocument(TypedDict):
    text: str


class V1RerankResult(TypedDict):
    index: int
    relevance_score: float
    document: NotRequired[V1RerankDocument | str]
    """`{"text": ...}` (Cohere v1, Jina); a plain string in Infinity's shape (`/rerank`)."""


class RerankUsage(TypedDict):
    total_tokens: int


class V1RerankResponse(TypedDict):
    model: str
    results: list[V1RerankResult]
    usage: RerankUsage


# --- Cohere v2 (https://docs.cohere.com/reference/rerank, /reference/embed) ---------------


def _cohere_truncate(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class CohereRerankRequest(_Request):
    query: str
    documents: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(default=None, ge=1)

    _documents = field_validator("documents", mode="before")(_document_texts)


class CohereMeta(TypedDict):
    api_version: dict[str, str]
    billed_units: dict[str, int]


class CohereRerankResponse(TypedDict):
    id: str
    results: list[V1RerankResult]
    meta: CohereMeta


class CohereEmbedRequest(_Request):
    texts: Annotated[list[str], Field(min_length=1)]
    model: str | None = None
    input_type: str | None = Field(
        default=None, description="search_query, search_document, ...: a prompt of that name"
    )
    embedding_types: Annotated[list[EmbeddingType], Field(min_length=1)] = ["float"]
    truncate: Literal["NONE", "START", "END"] = "END"
    output_dimension: int | None = Field(default=None, ge=1)

    _truncate = field_validator("truncate", mode="before")(_cohere_truncate)


class CohereEmbedResponse(TypedDict):
    id: str
    embeddings: dict[str, list[Any]]
    texts: list[str]
    meta: CohereMeta
    response_type: Literal["embeddings_by_type"]


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
    load_seconds: NotRequired[float]
    """When ready: seconds loading (here the sum over models; per model in `models`)."""
    warmup_seconds: NotRequired[float]
    """When ready: seconds warming up, engine and HTTP (sum over models; per model too)."""


class PhaseSeconds(TypedDict):
    load_seconds: float
    warmup_seconds: float
