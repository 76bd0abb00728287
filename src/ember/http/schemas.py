"""Request and response bodies, in the order of the APIs they mirror.

- TEI: https://huggingface.github.io/text-embeddings-inference/ (openapi.json)
- OpenAI embeddings: https://platform.openai.com/docs/api-reference/embeddings
- The `/v1/rerank` shape RAG frameworks send (Cohere / Jina style).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class RankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


PredictInput = str | list[str] | list[list[str]]


class PredictRequest(_Strict):
    inputs: PredictInput = Field(description="A text, a pair [a, b], or a list of texts or pairs")
    raw_scores: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "left"] = "right"
    model: str | None = None

    _direction = field_validator("truncation_direction", mode="before")(_lower_direction)


class Prediction(BaseModel):
    label: str
    score: float


class TokenizeRequest(_Strict):
    inputs: str | Annotated[list[str], Field(min_length=1)]
    add_special_tokens: bool = True
    model: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class ErrorBody(BaseModel):
    error: str
    error_type: str


# --- OpenAI ------------------------------------------------------------------------------


class EmbeddingsRequest(_Strict):
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="A text or a list of texts"
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ember"
    task: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
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


class V1RerankDocument(BaseModel):
    text: str


class V1RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: V1RerankDocument | None = None


class V1RerankResponse(BaseModel):
    model: str
    results: list[V1RerankResult]
    usage: dict[str, int]


# --- probes and info ---------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["alive"] = "alive"
    stage: str


class Readiness(BaseModel):
    status: str
    error: str | None = None
    models: list[dict[str, Any]] = []
    ready_seconds: float | None = None
    warmup: list[dict[str, Any]] | None = None
