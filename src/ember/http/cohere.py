"""Rerank and embed in Cohere's shapes: `/v1/rerank` as RAG frameworks send it (Cohere v1 /
Jina), and Cohere's v2 `/v2/rerank` and `/v2/embed` (https://docs.cohere.com/reference/rerank,
https://docs.cohere.com/reference/embed)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ember.engine.model import ModelEngine
from ember.http import schemas as s
from ember.http import shaping, table
from ember.http.deps import EnginesDep, SettingsDep, StateDep, on
from ember.http.errors import OPENAI_ERRORS, TEI_ERRORS
from ember.http.openai import encode_as
from ember.http.shaping import JSON
from ember.http.tei import rerank_items
from ember.models import Task

router = APIRouter(tags=["Cohere"])

# Cohere's `input_type` → the sentence-transformers prompt names models commonly define.
_PROMPTS = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage", "document_prompt"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


def _prompt(model: ModelEngine, input_type: str | None) -> str | None:
    """The model's prompt for a Cohere `input_type`, or None when it has none (then the
    model's default prompt applies, as for any request)."""
    if input_type is None:
        return None
    for name in _PROMPTS.get(input_type, (input_type,)):
        if name in model.spec.prompts:
            return name
    return None


@on(router, table.V1_RERANK, response_model=s.V1RerankResponse, responses=OPENAI_ERRORS)
async def v1_rerank(req: s.V1RerankRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.RERANK, req.model)
    tei = s.RerankRequest(
        query=req.query,
        texts=req.documents,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
    )
    items, tokens, headers = await rerank_items(model, tei, limit=settings.max_client_batch_size)
    body = shaping.v1_rerank(
        items,
        req.documents,
        top_n=req.top_n,
        return_documents=req.return_documents,
        model=model.spec.name,
        tokens=tokens,
    )
    return JSON(body, headers=headers)


@on(router, table.V2_RERANK, response_model=s.CohereRerankResponse, responses=TEI_ERRORS)
async def v2_rerank(
    req: s.CohereRerankRequest, engines: EnginesDep, settings: SettingsDep
) -> Response:
    model = engines.select(Task.RERANK, req.model)
    tei = s.RerankRequest(query=req.query, texts=req.documents)
    items, tokens, headers = await rerank_items(model, tei, limit=settings.max_client_batch_size)
    body = shaping.cohere_rerank(
        items, req.documents, top_n=req.top_n, return_documents=req.return_documents, tokens=tokens
    )
    return JSON(body, headers=headers)


@on(router, table.V2_EMBED, response_model=s.CohereEmbedResponse, responses=TEI_ERRORS)
async def v2_embed(req: s.CohereEmbedRequest, state: StateDep) -> Response:
    model = state.engines.select(Task.EMBED, req.model)
    texts = shaping.as_list(req.texts, limit=state.settings.max_client_batch_size)
    result = await model.embed(
        texts,
        truncate=req.truncate != "NONE",
        direction="left" if req.truncate == "START" else "right",
        dimensions=req.output_dimension,
        prompt_name=_prompt(model, req.input_type),
    )
    kinds = list(dict.fromkeys(req.embedding_types))
    by_type = await encode_as(state, model, result.rows, kinds, dimensions=req.output_dimension)
    return JSON(
        shaping.cohere_embed(by_type, texts, tokens=result.tokens),
        headers=shaping.timing_headers(
            result.timings, tokens=result.tokens, chars=shaping.characters(texts)
        ),
    )
