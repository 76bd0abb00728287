"""TEI's routes (text-embeddings-inference `router/src/http/server.rs`): parse, call, shape."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ember import __version__
from ember.engine.model import ModelEngine
from ember.errors import NotReady
from ember.http import schemas as s
from ember.http import shaping, table
from ember.http.deps import EnginesDep, SettingsDep, on
from ember.http.errors import TEI_ERRORS
from ember.http.shaping import JSON
from ember.lifecycle import Stage
from ember.models import Task

router = APIRouter(tags=["TEI"], responses=TEI_ERRORS)

_Body = TypeVar("_Body", bound=BaseModel)


def parse(schema: type[_Body], body: dict[str, Any]) -> _Body:
    """Validate a body taken as a dict (`POST /`): a bad one is a 422, as on the other routes."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def embed_rows(model: ModelEngine, req: s.EmbedRequest, *, limit: int) -> Response:
    result = await model.embed(
        shaping.as_list(req.inputs, limit=limit),
        normalize=req.normalize,
        truncate=req.truncate,
        direction=req.truncation_direction,
        dimensions=req.dimensions,
        prompt_name=req.prompt_name,
    )
    return JSON(shaping.embeddings(result.rows))


async def rerank_items(
    model: ModelEngine, req: s.RerankRequest, *, limit: int
) -> tuple[list[s.RankItem], int]:
    """The ranked items, best first, and the tokens the pairs took."""
    texts = shaping.as_list(req.texts, limit=limit)
    result = await model.rerank(
        req.query,
        texts,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
        direction=req.truncation_direction,
    )
    return shaping.ranked(result.rows[:, 0], texts, return_text=req.return_text), result.tokens


async def predict_body(model: ModelEngine, req: s.PredictRequest, *, limit: int) -> Any:
    items, batch = shaping.predict_items(req.inputs, limit=limit)
    result = await model.classify(
        items,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
        direction=req.truncation_direction,
    )
    per_input = shaping.predictions(result.rows, model.spec.labels)
    return per_input if batch else per_input[0]


@on(router, table.INFO)
async def info(engines: EnginesDep, settings: SettingsDep) -> Response:
    first = engines.first()
    body: dict[str, Any] = {
        "version": __version__,
        "stage": engines.stage.value,
        "max_client_batch_size": settings.max_client_batch_size,
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
            "model_type": shaping.model_type(
                first.task, pooling=first.spec.pooling, labels=first.spec.labels
            ),
            "max_input_length": d["max_input_length"],
            "max_batch_tokens": d["buckets"]["max_batch_tokens"],
            "max_batch_requests": d["buckets"]["max_batch_requests"],
            "model_dtype": d.get("dtype"),
            "warmup": d.get("warmup"),
        }
    return JSON(body)


@on(router, table.EMBED, response_model=list[list[float]])
async def embed(req: s.EmbedRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.EMBED, req.model)
    return await embed_rows(model, req, limit=settings.max_client_batch_size)


@on(router, table.RERANK, response_model=list[s.RankItem])
async def rerank(req: s.RerankRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.RERANK, req.model)
    items, _tokens = await rerank_items(model, req, limit=settings.max_client_batch_size)
    return JSON(items)


@on(router, table.PREDICT, response_model=list[s.Prediction] | list[list[s.Prediction]])
async def predict(req: s.PredictRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.CLASSIFY, req.model)
    return JSON(await predict_body(model, req, limit=settings.max_client_batch_size))


async def dispatch(body: dict[str, Any], engines: EnginesDep, settings: SettingsDep) -> Response:
    """Answer `body` as the route of the model's task would: embed, rerank or predict."""
    name = body.get("model") if isinstance(body.get("model"), str) else None
    first = engines.first()
    if first is None:
        raise NotReady(f"the server is {engines.stage.value}", retry_after=1)
    model = engines.select(first.task, name) if name else first
    limit = settings.max_client_batch_size
    if model.task is Task.EMBED:
        return await embed_rows(model, parse(s.EmbedRequest, body), limit=limit)
    if model.task is Task.RERANK:
        items, _tokens = await rerank_items(model, parse(s.RerankRequest, body), limit=limit)
        return JSON(items)
    return JSON(await predict_body(model, parse(s.PredictRequest, body), limit=limit))


@on(router, table.ROOT)
async def root(body: dict[str, Any], engines: EnginesDep, settings: SettingsDep) -> Response:
    """Dispatches on the model's task: embed, rerank or predict."""
    return await dispatch(body, engines, settings)


@on(router, table.TOKENIZE, response_model=list[list[s.SimpleToken]])
async def tokenize(req: s.TokenizeRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    first = engines.first()
    model = engines.select(first.task if first else Task.EMBED, req.model)
    if model.tokenizer is None or model.lifecycle.stage in (Stage.STARTING, Stage.LOADING):
        raise NotReady(f"model {model.spec.name!r} is {model.lifecycle.stage.value}")
    texts = shaping.as_list(req.inputs, limit=settings.max_client_batch_size)
    encodings = model.tokenizer.tokenize(list(texts), add_special_tokens=req.add_special_tokens)
    return JSON(shaping.tokens(encodings, texts))
