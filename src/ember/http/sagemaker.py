"""Amazon SageMaker's container contract: `GET /ping` (health) and `POST /invocations`, which
answers as `POST /` does (the model's task decides: embed, rerank or predict)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ember.http import schemas as s
from ember.http import table
from ember.http.deps import EnginesDep, SettingsDep, on
from ember.http.errors import TEI_ERRORS
from ember.http.probes import health
from ember.http.tei import dispatch

router = APIRouter(tags=["SageMaker"], responses=TEI_ERRORS)

on(router, table.PING, response_model=s.Health)(health)


@on(router, table.INVOCATIONS)
async def invocations(body: dict[str, Any], engines: EnginesDep, settings: SettingsDep) -> Response:
    """Dispatches on the model's task: embed, rerank or predict."""
    return await dispatch(body, engines, settings)
