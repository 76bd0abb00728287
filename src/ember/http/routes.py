"""Thin routes: parse, call the engine, build the response."""

from __future__ import annotations

import base64
import time
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ember import __version__
from ember.engine.model import ModelEngine
from ember.engine.registry import Engines
from ember.engine.tokenizer import Item
from ember.errors import InvalidInput, NotReady, TooLarge
from ember.http import schemas as s
from ember.lifecycle import Stage
from ember.models import Task
from ember.settings import Settings

_JSON = "application/json"

# Every status the error table can answer, documented per API family so clients and fuzzers
# see the real contract.
_ERROR_STATUSES = (401, 404, 413, 422, 424, 429, 500, 503)
TEI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorBody} for code in _ERROR_STATUSES
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.OpenAIError} for code in _ERROR_STATUSES
}
_CREATED = int(time.time())


class JSON(Response):
    """orjson, numpy arrays serialised natively (no per-float Python objects)."""

    media_type = _JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _as_list(value: str | list[str], *, limit: int) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidInput("`inputs` must not be an empty list")
    if len(texts) > limit:
        raise TooLarge(
            f"{len(texts)} inputs is more than the max client batch size of {limit}; "
            "split the request"
        )
    return texts


def _predict_items(inputs: s.PredictInput, *, limit: int) -> tuple[list[Item], bool]:
    """TEI's rules: a text, a pair [a, b], or a list of texts or pairs → (items, is_batch)."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise InvalidInput("`inputs` must not be an empty list")
    if all(isinstance(i, str) for i in inputs):
        texts = [str(i) for i in inputs]
        if len(texts) == 2:
            return [(texts[0], texts[1])], False
        return _as_list(texts, limit=limit), True  # type: ignore[return-value]
    items: list[Item] = []
    for entry in inputs:
        if isinstance(entry, list) and len(entry) == 2:
            items.append((entry[0], entry[1]))
        elif isinstance(entry, list) and len(entry) == 1:
            items.append(entry[0])
        else:
            raise InvalidInput("each input must be a text or a pair [text, text]")
    if len(items) > limit:
        raise TooLarge(f"{len(items)} inputs is more than the max client batch size of {limit}")
    return items, True


_Body = TypeVar("_Body", bound=BaseModel)


def _parse(schema: type[_Body], body: dict[str, Any]) -> _Body:
    """Validate a body taken as a dict (`POST /`): a bad one is a 422, as on the other routes."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _tei_model_type(model: ModelEngine) -> dict[str, Any]:
    """TEI's `model_type`: embedding (pooling), reranker or classifier (labels)."""
    spec = model.spec
    if model.task is Task.EMBED:
        return {"embedding": {"pooling": spec.pooling}}
    labels = {
        "id2label": dict(enumerate(spec.labels)),
        "label2id": {label: i for i, label in enumerate(spec.labels)},
    }
    return {"reranker" if model.task is Task.RERANK else "classifier": labels}


def build_router(engines: Engines, settings: Settings) -> APIRouter:
    router = APIRouter()
    limit = settings.max_client_batch_size

    # --- probes ------------------------------------------------------------------------

    @router.get("/health", response_model=s.Health, tags=["probes"])
    async def health() -> Response:
        """Liveness: 200 whenever the process answers, with the stage it is in."""
        return JSON({"status": "alive", "stage": engines.stage.value})

    @router.get(
        "/ready",
        response_model=s.Readiness,
        responses={503: {"model": s.Readiness}},
        tags=["probes"],
    )
    async def ready() -> Response:
        """Readiness: 200 only when every model is loaded and warm."""
        body = engines.snapshot()
        if engines.ready:
            body["ready_seconds"] = engines.ready_seconds
            body["warmup"] = [m.warmup_report.to_dict() for m in engines.models if m.warmup_report]
            return JSON(body)
        return JSON(body, status_code=503, headers={"Retry-After": "1"})

    # --- TEI ---------------------------------------------------------------------------

    @router.get("/info", tags=["TEI"], responses=TEI_ERRORS)
    async def info() -> Response:
        first = engines.first()
        body: dict[str, Any] = {
            "version": __version__,
            "stage": engines.stage.value,
            "max_client_batch_size": limit,
            "max_concurrent_requests": settings.max_concurrent_requests,
            "auto_truncate": settings.auto_truncate,
            "payload_limit": settings.payload_limit,
            "cores": settings.available_cores(),
            "threads": settings.intra_op_threads(),
            "models": [m.describe() for m in engines.models],
        }
        if first is not None:
            # TEI's top-level fields describe the (first) model.
            d = first.describe()
            body |= {
                "model_id": d["model_id"],
                "model_type": _tei_model_type(first),
                "max_input_length": d["max_input_length"],
                "max_batch_tokens": d["buckets"]["max_batch_tokens"],
                "max_batch_requests": d["buckets"]["max_batch_requests"],
                "model_dtype": d.get("dtype"),
                "warmup": d.get("warmup"),
            }
        return JSON(body)

    @router.post("/embed", tags=["TEI"], response_model=list[list[float]], responses=TEI_ERRORS)
    async def embed(req: s.EmbedRequest) -> Response:
        model = engines.select(Task.EMBED, req.model)
        result = await model.embed(
            _as_list(req.inputs, limit=limit),
            normalize=req.normalize,
            truncate=req.truncate,
            direction=req.truncation_direction,
            dimensions=req.dimensions,
            prompt_name=req.prompt_name,
        )
        return JSON(result.rows)

    async def _rerank(model: ModelEngine, req: s.RerankRequest) -> tuple[list[dict[str, Any]], int]:
        """The ranked items, best first, and the tokens the pairs took."""
        if not req.texts:
            raise InvalidInput("`texts` must not be empty")
        if len(req.texts) > limit:
            raise TooLarge(
                f"{len(req.texts)} texts is more than the max client batch size of {limit}"
            )
        result = await model.rerank(
            req.query,
            req.texts,
            raw_scores=req.raw_scores,
            truncate=req.truncate,
            direction=req.truncation_direction,
        )
        scores = result.rows[:, 0]
        order = np.argsort(-scores, kind="stable")
        out: list[dict[str, Any]] = []
        for i in order:
            item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
            if req.return_text:
                item["text"] = req.texts[i]
            out.append(item)
        return out, result.tokens

    @router.post("/rerank", tags=["TEI"], response_model=list[s.RankItem], responses=TEI_ERRORS)
    async def rerank(req: s.RerankRequest) -> Response:
        ranked, _tokens = await _rerank(engines.select(Task.RERANK, req.model), req)
        return JSON(ranked)

    async def _predict(model: ModelEngine, req: s.PredictRequest) -> Any:
        items, batch = _predict_items(req.inputs, limit=limit)
        result = await model.classify(
            items,
            raw_scores=req.raw_scores,
            truncate=req.truncate,
            direction=req.truncation_direction,
        )
        labels = model.spec.labels
        per_input = [
            sorted(
                ({"label": labels[j], "score": float(row[j])} for j in range(len(labels))),
                key=lambda p: -float(p["score"]),  # type: ignore[arg-type]
            )
            for row in result.rows
        ]
        return per_input if batch else per_input[0]

    @router.post(
        "/predict",
        tags=["TEI"],
        response_model=list[s.Prediction] | list[list[s.Prediction]],
        responses=TEI_ERRORS,
    )
    async def predict(req: s.PredictRequest) -> Response:
        return JSON(await _predict(engines.select(Task.CLASSIFY, req.model), req))

    @router.post("/", tags=["TEI"], responses=TEI_ERRORS)
    async def root(body: dict[str, Any]) -> Response:
        """Dispatches on the model's task: embed, rerank or predict."""
        name = body.get("model") if isinstance(body.get("model"), str) else None
        first = engines.first()
        if first is None:
            raise NotReady(f"the server is {engines.stage.value}", retry_after=1)
        model = engines.select(first.task, name) if name else first
        if model.task is Task.EMBED:
            return await embed(_parse(s.EmbedRequest, body))
        if model.task is Task.RERANK:
            ranked, _tokens = await _rerank(model, _parse(s.RerankRequest, body))
            return JSON(ranked)
        return JSON(await _predict(model, _parse(s.PredictRequest, body)))

    @router.post(
        "/tokenize", tags=["TEI"], response_model=list[list[s.SimpleToken]], responses=TEI_ERRORS
    )
    async def tokenize(req: s.TokenizeRequest) -> Response:
        first = engines.first()
        model = engines.select(first.task if first else Task.EMBED, req.model)
        if model.tokenizer is None or model.lifecycle.stage in (Stage.STARTING, Stage.LOADING):
            raise NotReady(f"model {model.spec.name!r} is {model.lifecycle.stage.value}")
        texts = _as_list(req.inputs, limit=limit)
        out = []
        for enc, text in zip(
            model.tokenizer.tokenize(list(texts), add_special_tokens=req.add_special_tokens),
            texts,
            strict=True,
        ):
            special = enc.special_tokens_mask
            tokens = []
            for k, (tid, (start, stop)) in enumerate(zip(enc.ids, enc.offsets, strict=True)):
                is_special = bool(special[k])
                tokens.append(
                    {
                        "id": tid,
                        "text": enc.tokens[k] if is_special else text[start:stop],
                        "special": is_special,
                        "start": None if is_special else start,
                        "stop": None if is_special else stop,
                    }
                )
            out.append(tokens)
        return JSON(out)

    # --- OpenAI ------------------------------------------------------------------------

    @router.post(
        "/v1/embeddings",
        tags=["OpenAI"],
        response_model=s.EmbeddingsResponse,
        responses=OPENAI_ERRORS,
    )
    async def embeddings(req: s.EmbeddingsRequest) -> Response:
        texts = _as_list(req.input, limit=limit)
        model = engines.select(Task.EMBED, req.model)
        result = await model.embed(texts, normalize=True, dimensions=req.dimensions)
        if req.encoding_format == "base64":
            rows: list[Any] = [
                base64.b64encode(r.astype("<f4", copy=False).tobytes()).decode()
                for r in result.rows
            ]
        else:
            rows = list(result.rows)
        return JSON(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": row}
                    for i, row in enumerate(rows)
                ],
                "model": model.spec.name,
                "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
            }
        )

    @router.get("/v1/models", tags=["OpenAI"], response_model=s.ModelList, responses=OPENAI_ERRORS)
    async def models() -> Response:
        return JSON(
            {
                "object": "list",
                "data": [
                    {
                        "id": m.spec.name,
                        "object": "model",
                        "created": _CREATED,
                        "owned_by": "ember",
                        "task": m.task.value,
                    }
                    for m in engines.models
                ],
            }
        )

    @router.post(
        "/v1/rerank", tags=["Rerank"], response_model=s.V1RerankResponse, responses=OPENAI_ERRORS
    )
    async def v1_rerank(req: s.V1RerankRequest) -> Response:
        model = engines.select(Task.RERANK, req.model)
        ranked, tokens = await _rerank(
            model,
            s.RerankRequest(
                query=req.query,
                texts=req.documents,
                raw_scores=req.raw_scores,
                return_text=req.return_documents,
                truncate=req.truncate,
            ),
        )
        if req.top_n is not None:
            ranked = ranked[: req.top_n]
        results = []
        for item in ranked:
            entry: dict[str, Any] = {"index": item["index"], "relevance_score": item["score"]}
            if req.return_documents:
                entry["document"] = {"text": item["text"]}
            results.append(entry)
        return JSON(
            {"model": model.spec.name, "results": results, "usage": {"total_tokens": tokens}}
        )

    return router
