"""TEI's routes (text-embeddings-inference `router/src/http/server.rs`): parse, call, shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from ember import __version__, gpus
from ember.engine.model import ModelEngine
from ember.engine.tokenizer import Item, check_ids, decode_ids, vocab_size
from ember.errors import NotReady, WrongTask
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


def _textual(inputs: list[Any]) -> bool:
    """Whether predict inputs are texts or pairs (not token ids)."""
    first = inputs[0]
    return isinstance(first, str) or (
        isinstance(first, list) and bool(first) and isinstance(first[0], str)
    )


def _headers(result: Any, items: Sequence[Item]) -> dict[str, str]:
    """TEI's timing headers for an engine result over `items`."""
    return shaping.timing_headers(
        result.timings, tokens=result.tokens, chars=shaping.characters(items)
    )


async def embed_rows(model: ModelEngine, req: s.EmbedRequest, *, limit: int) -> Response:
    texts, id_rows = shaping.split_inputs(req.inputs, limit=limit)
    if id_rows:
        by_id = await model.embed_ids(
            id_rows,
            normalize=req.normalize,
            truncate=req.truncate,
            direction=req.truncation_direction,
            dimensions=req.dimensions,
            prompt_name=req.prompt_name,
        )
        return JSON(by_id.rows, headers=_headers(by_id, []))
    result = await model.embed(
        texts,
        normalize=req.normalize,
        truncate=req.truncate,
        direction=req.truncation_direction,
        dimensions=req.dimensions,
        prompt_name=req.prompt_name,
    )
    return JSON(shaping.embeddings(result.rows), headers=_headers(result, texts))


async def sparse_rows(model: ModelEngine, req: s.EmbedRequest, *, limit: int) -> Response:
    """A SPLADE model's vectors as TEI's `/embed_sparse` answers them: non-zero entries only."""
    texts, id_rows = shaping.split_inputs(req.inputs, limit=limit)
    if id_rows:
        by_id = await model.embed_ids(
            id_rows,
            normalize=False,
            truncate=req.truncate,
            direction=req.truncation_direction,
            prompt_name=req.prompt_name,
        )
        return JSON(shaping.sparse(by_id.rows), headers=_headers(by_id, []))
    result = await model.embed(
        texts,
        normalize=False,
        truncate=req.truncate,
        direction=req.truncation_direction,
        prompt_name=req.prompt_name,
    )
    return JSON(shaping.sparse(result.rows), headers=_headers(result, texts))


async def rerank_items(
    model: ModelEngine, req: s.RerankRequest, *, limit: int
) -> tuple[list[s.RankItem], int, dict[str, str]]:
    """The ranked items, best first, the tokens the pairs took and the timing headers."""
    texts = shaping.as_list(req.texts, limit=limit)
    result = await model.rerank(
        req.query,
        texts,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
        direction=req.truncation_direction,
    )
    items = shaping.ranked(result.rows[:, 0], texts, return_text=req.return_text)
    headers = _headers(result, [(req.query, t) for t in texts])
    return items, result.tokens, headers


async def v1_rerank_response(
    model: ModelEngine, req: s.V1RerankRequest, *, limit: int, document_as_text: bool = False
) -> Response:
    """Rerank answered in Cohere v1's shape (`/v1/rerank`, and `/rerank` bodies that name
    `documents` as Infinity's and Cohere's clients send them)."""
    tei = s.RerankRequest(
        query=req.query, texts=req.documents, raw_scores=req.raw_scores, truncate=req.truncate
    )
    items, tokens, headers = await rerank_items(model, tei, limit=limit)
    body = shaping.v1_rerank(
        items,
        req.documents,
        top_n=req.top_n,
        return_documents=req.return_documents,
        model=model.spec.name,
        tokens=tokens,
        document_as_text=document_as_text,
    )
    return JSON(body, headers=headers)


async def predict_response(model: ModelEngine, req: s.PredictRequest, *, limit: int) -> Response:
    inputs = req.inputs
    if isinstance(inputs, list) and inputs and not _textual(inputs):
        id_rows = shaping.id_rows(inputs)  # type: ignore[arg-type]
        shaping.as_list([""] * len(id_rows), limit=limit)  # the same count limit as texts
        by_id = await model.classify_ids(
            id_rows,
            raw_scores=req.raw_scores,
            truncate=req.truncate,
            direction=req.truncation_direction,
        )
        scored = shaping.predictions(by_id.rows, model.spec.labels)
        batched = isinstance(inputs[0], list)
        return JSON(scored if batched else scored[0], headers=_headers(by_id, []))
    items, batch = shaping.predict_items(inputs, limit=limit)  # type: ignore[arg-type]
    result = await model.classify(
        items,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
        direction=req.truncation_direction,
    )
    per_input = shaping.predictions(result.rows, model.spec.labels)
    return JSON(per_input if batch else per_input[0], headers=_headers(result, items))


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
        "workers": gpus.role(),
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


@on(router, table.RERANK, response_model=list[s.RankItem] | s.V1RerankResponse)
async def rerank(
    req: s.RerankRequest | s.V1RerankRequest, engines: EnginesDep, settings: SettingsDep
) -> Response:
    """TEI's body (`query`, `texts`) answers TEI's ranked list; a body with `documents` instead
    (Infinity's `/rerank`, litellm's `infinity/` provider) answers Infinity's: Cohere v1's
    shape with each document as a plain string."""
    model = engines.select(Task.RERANK, req.model)
    limit = settings.max_client_batch_size
    if isinstance(req, s.V1RerankRequest):
        return await v1_rerank_response(model, req, limit=limit, document_as_text=True)
    items, _, headers = await rerank_items(model, req, limit=limit)
    return JSON(items, headers=headers)


@on(router, table.PREDICT, response_model=list[s.Prediction] | list[list[s.Prediction]])
async def predict(req: s.PredictRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.CLASSIFY, req.model)
    return await predict_response(model, req, limit=settings.max_client_batch_size)


async def dispatch(body: dict[str, Any], engines: EnginesDep, settings: SettingsDep) -> Response:
    """Answer `body` as the route of the model's task would: embed, rerank or predict."""
    name = body.get("model") if isinstance(body.get("model"), str) else None
    first = engines.first()
    if first is None:
        raise NotReady(f"the server is {engines.stage.value}", retry_after=1)
    model = engines.select(first.task, name) if name else first
    limit = settings.max_client_batch_size
    if model.task is Task.EMBED:
        # TEI's `POST /` also takes a `/similarity` body (its untagged request enum), which
        # huggingface_hub's `sentence_similarity` sends to a bare endpoint URL.
        if isinstance(body.get("inputs"), dict):
            return await similarity_scores(model, parse(s.SimilarityRequest, body), limit=limit)
        if model.spec.splade:  # TEI serves `/embed_sparse` at `POST /` for SPLADE models
            return await sparse_rows(model, parse(s.EmbedRequest, body), limit=limit)
        return await embed_rows(model, parse(s.EmbedRequest, body), limit=limit)
    if model.task is Task.RERANK:
        items, _, headers = await rerank_items(model, parse(s.RerankRequest, body), limit=limit)
        return JSON(items, headers=headers)
    return await predict_response(model, parse(s.PredictRequest, body), limit=limit)


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
    shaping.check_unicode(texts)
    # Admitted by work like inference, and off the event loop when large (a near-limit body
    # stalled probes for 2 s), by the engine's tokenizer threads.
    encodings = await model.tokenize(list[Item](texts), add_special_tokens=req.add_special_tokens)
    return JSON(shaping.tokens(encodings, texts))


@on(router, table.DECODE, response_model=list[str])
async def decode(req: s.DecodeRequest, engines: EnginesDep) -> Response:
    """Token ids back to text, one string per id list (TEI's `/decode`)."""
    first = engines.first()
    model = engines.select(first.task if first else Task.EMBED, req.model)
    if model.tokenizer is None or model.lifecycle.stage in (Stage.STARTING, Stage.LOADING):
        raise NotReady(f"model {model.spec.name!r} is {model.lifecycle.stage.value}")
    rows = shaping.id_rows(req.ids)
    check_ids(rows, vocab=vocab_size(model.tokenizer))
    skip = req.skip_special_tokens
    return JSON([decode_ids(model.tokenizer, ids, skip_special_tokens=skip) for ids in rows])


@on(router, table.SIMILARITY, response_model=list[float])
async def similarity(
    req: s.SimilarityRequest, engines: EnginesDep, settings: SettingsDep
) -> Response:
    """Cosine similarity of each sentence to the source sentence (huggingface_hub's
    `sentence_similarity`)."""
    model = engines.select(Task.EMBED, req.model)
    return await similarity_scores(model, req, limit=settings.max_client_batch_size)


async def similarity_scores(
    model: ModelEngine, req: s.SimilarityRequest, *, limit: int
) -> Response:
    """`/similarity`'s answer from `model`."""
    params = req.parameters or s.SimilarityParameters()
    texts = [req.inputs.source_sentence, *req.inputs.sentences]
    shaping.as_list(req.inputs.sentences, limit=limit)
    result = await model.embed(
        texts,
        normalize=True,
        truncate=params.truncate,
        direction=params.truncation_direction,
        prompt_name=params.prompt_name,
    )
    return JSON(shaping.similarities(result.rows), headers=_headers(result, texts))


def _not_splade(model: ModelEngine) -> WrongTask:
    return WrongTask(
        f"/embed_sparse needs a SPLADE model (a masked-LM head with SpladePooling); model "
        f"{model.spec.name!r} ({model.task.value}, {model.spec.pooling} pooling) serves "
        f"{_ROUTE_OF[model.task]}"
    )


_ROUTE_OF = {
    Task.EMBED: "/embed and /v1/embeddings",
    Task.RERANK: "/rerank",
    Task.CLASSIFY: "/predict",
}


@on(router, table.EMBED_ALL, response_model=list[list[list[float]]])
async def embed_all(req: s.EmbedAllRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    """Per input, the raw last hidden state of each of its tokens (special tokens included, no
    padding, not normalised): TEI's `/embed_all`."""
    model = engines.select(Task.EMBED, req.model)
    texts, id_rows = shaping.split_inputs(req.inputs, limit=settings.max_client_batch_size)
    result = await model.embed_all(
        texts,
        id_rows,
        truncate=req.truncate,
        direction=req.truncation_direction,
        prompt_name=req.prompt_name,
    )
    vectors = shaping.token_vectors(result.per_token or [])
    return JSON(vectors, headers=_headers(result, texts))


@on(router, table.EMBED_SPARSE, response_model=list[list[s.SparseValue]])
async def embed_sparse(req: s.EmbedRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    """SPLADE vectors, non-zero entries only; 424 for a model without SPLADE pooling (TEI)."""
    model = engines.select(Task.EMBED, req.model)
    if not model.spec.splade:
        raise _not_splade(model)
    return await sparse_rows(model, req, limit=settings.max_client_batch_size)
