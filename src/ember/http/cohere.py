"""Rerank in the shape RAG frameworks send (Cohere / Jina: `query`, `documents`, `top_n`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from ember.http import schemas as s
from ember.http import shaping, table
from ember.http.deps import EnginesDep, SettingsDep, on
from ember.http.errors import OPENAI_ERRORS
from ember.http.shaping import JSON
from ember.http.tei import rerank_items
from ember.models import Task

router = APIRouter(tags=["Rerank"])


@on(router, table.V1_RERANK, response_model=s.V1RerankResponse, responses=OPENAI_ERRORS)
async def v1_rerank(req: s.V1RerankRequest, engines: EnginesDep, settings: SettingsDep) -> Response:
    model = engines.select(Task.RERANK, req.model)
    tei = s.RerankRequest(
        query=req.query,
        texts=req.documents,
        raw_scores=req.raw_scores,
        truncate=req.truncate,
    )
    items, tokens = await rerank_items(model, tei, limit=settings.max_client_batch_size)
    return JSON(
        shaping.v1_rerank(
            items,
            req.documents,
            top_n=req.top_n,
            return_documents=req.return_documents,
            model=model.spec.name,
            tokens=tokens,
        )
    )
