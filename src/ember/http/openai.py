"""OpenAI's embeddings API (https://platform.openai.com/docs/api-reference/embeddings)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fastapi import APIRouter
from starlette.responses import Response

from ember.backends.base import FloatArray
from ember.engine.model import ModelEngine
from ember.http import quantize, shaping, table
from ember.http import schemas as s
from ember.http.deps import AppState, EnginesDep, StateDep, on
from ember.http.errors import OPENAI_ERRORS
from ember.http.shaping import JSON
from ember.models import Task

router = APIRouter(tags=["OpenAI"], responses=OPENAI_ERRORS)

_CREATED = int(time.time())
MAX_INPUTS = 2048
"""OpenAI's most inputs per embeddings request; --max-client-batch-size may lower it."""


async def encode_as(
    state: AppState,
    model: ModelEngine,
    rows: FloatArray,
    kinds: Sequence[quantize.EmbeddingType],
    *,
    dimensions: int | None,
    normalize: bool = True,
) -> dict[str, shaping.Encoded]:
    """`rows` in each requested embedding type; int8/uint8 are calibrated on the model's own
    vectors of the calibration corpus (embedded once, at warm-up; see `quantize`)."""
    bounds = None
    if any(k in ("int8", "uint8") for k in kinds):
        raw = state.calibration.get(model.spec.name)
        if raw is None:
            result = await model.embed(list(quantize.CALIBRATION), normalize=False)
            raw = state.calibration[model.spec.name] = result.rows
        bounds = quantize.ranges(raw, dimensions=dimensions, normalize=normalize)
    return {kind: shaping.encoded(rows, kind, bounds=bounds) for kind in kinds}


@on(router, table.V1_EMBEDDINGS, response_model=s.EmbeddingsResponse)
@on(router, table.EMBEDDINGS, response_model=s.EmbeddingsResponse)
async def embeddings(req: s.EmbeddingsRequest, state: StateDep) -> Response:
    limit = min(MAX_INPUTS, state.settings.max_client_batch_size)
    texts, id_rows = shaping.split_inputs(req.input, limit=limit)
    model = state.engines.select(Task.EMBED, req.model)
    if id_rows:
        shaping.check_tiktoken_ids(req.model, served=model.names)
        result = await model.embed_ids(id_rows, dimensions=req.dimensions)
    else:
        result = await model.embed(texts, normalize=True, dimensions=req.dimensions)
    kind = req.encoding_format
    rows = (await encode_as(state, model, result.rows, [kind], dimensions=req.dimensions))[kind]
    return JSON(
        shaping.openai_embeddings(rows, model=model.spec.name, tokens=result.tokens),
        headers=shaping.timing_headers(
            result.timings, tokens=result.tokens, chars=shaping.characters(texts)
        ),
    )


@on(router, table.V1_MODELS, response_model=s.ModelList)
async def models(engines: EnginesDep) -> Response:
    served = [(m.spec.name, m.task) for m in engines.models]
    return JSON(shaping.model_list(served, created=_CREATED))
