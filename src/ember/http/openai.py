"""OpenAI's embeddings API (https://platform.openai.com/docs/api-reference/embeddings)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.responses import Response

from ember.http import schemas as s
from ember.http import shaping, table
from ember.http.deps import EnginesDep, SettingsDep, on
from ember.http.errors import OPENAI_ERRORS
from ember.http.shaping import JSON
from ember.models import Task

router = APIRouter(tags=["OpenAI"], responses=OPENAI_ERRORS)

_CREATED = int(time.time())


@on(router, table.V1_EMBEDDINGS, response_model=s.EmbeddingsResponse)
async def embeddings(
    req: s.EmbeddingsRequest, engines: EnginesDep, settings: SettingsDep
) -> Response:
    texts = shaping.as_list(req.input, limit=settings.max_client_batch_size)
    model = engines.select(Task.EMBED, req.model)
    result = await model.embed(texts, normalize=True, dimensions=req.dimensions)
    return JSON(
        shaping.openai_embeddings(
            shaping.embeddings(result.rows),
            encoding_format=req.encoding_format,
            model=model.spec.name,
            tokens=result.tokens,
        )
    )


@on(router, table.V1_MODELS, response_model=s.ModelList)
async def models(engines: EnginesDep) -> Response:
    served = [(m.spec.name, m.task) for m in engines.models]
    return JSON(shaping.model_list(served, created=_CREATED))
