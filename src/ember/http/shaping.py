"""Pure functions from engine results to response bodies (the shapes in `schemas`).

No I/O and no engine: each takes arrays, labels and request options, so each is unit-tested
alone (tests/unit/http/test_shaping.py).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import orjson
from starlette.responses import Response
from tokenizers import Encoding

from ember.backends.base import FloatArray
from ember.engine.tokenizer import Item
from ember.errors import InvalidInput, TooLarge
from ember.http import schemas as s
from ember.models import Task


class JSON(Response):
    """orjson, numpy arrays serialised natively (no per-float Python objects)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


# --- inputs ------------------------------------------------------------------------------


def _check_count(count: int, *, limit: int, what: str = "inputs") -> None:
    if count > limit:
        raise TooLarge(
            f"{count} {what} is more than the max client batch size of {limit}; split the request"
        )


def as_list(value: str | list[str], *, limit: int) -> list[str]:
    """A text or a list of texts as a non-empty list of at most `limit` texts."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidInput("`inputs` must not be an empty list")
    _check_count(len(texts), limit=limit)
    return texts


def predict_items(inputs: s.PredictInput, *, limit: int) -> tuple[list[Item], bool]:
    """TEI's rules: a text, a pair [a, b], or a list of texts or pairs → (items, is_batch)."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise InvalidInput("`inputs` must not be an empty list")
    if all(isinstance(i, str) for i in inputs):
        texts = [str(i) for i in inputs]
        if len(texts) == 2:
            return [(texts[0], texts[1])], False
        return list(as_list(texts, limit=limit)), True
    items: list[Item] = []
    for entry in inputs:
        if isinstance(entry, list) and len(entry) == 2:
            items.append((entry[0], entry[1]))
        elif isinstance(entry, list) and len(entry) == 1:
            items.append(entry[0])
        else:
            raise InvalidInput("each input must be a text or a pair [text, text]")
    _check_count(len(items), limit=limit)
    return items, True


# --- TEI ---------------------------------------------------------------------------------


def embeddings(rows: FloatArray) -> FloatArray:
    """Rows orjson can serialise: a column slice (`dimensions`) is not C-contiguous."""
    return np.ascontiguousarray(rows, dtype=np.float32)


def ranked(scores: FloatArray, texts: Sequence[str], *, return_text: bool) -> list[s.RankItem]:
    """TEI's rerank answer: one item per text, best score first (stable on ties)."""
    order = np.argsort(-scores, kind="stable")
    out: list[s.RankItem] = []
    for i in order:
        item: s.RankItem = {"index": int(i), "score": float(scores[i])}
        if return_text:
            item["text"] = texts[i]
        out.append(item)
    return out


def predictions(rows: FloatArray, labels: Sequence[str]) -> list[list[s.Prediction]]:
    """Per input, every label with its score, best first."""
    out: list[list[s.Prediction]] = []
    for row in rows:
        order = np.argsort(-row, kind="stable")
        out.append([{"label": labels[j], "score": float(row[j])} for j in order])
    return out


def tokens(encodings: Sequence[Encoding], texts: Sequence[str]) -> list[list[s.SimpleToken]]:
    """TEI's `/tokenize` answer: special tokens have no offsets; others carry their text."""
    out: list[list[s.SimpleToken]] = []
    for enc, text in zip(encodings, texts, strict=True):
        special = enc.special_tokens_mask
        row: list[s.SimpleToken] = []
        for k, (tid, (start, stop)) in enumerate(zip(enc.ids, enc.offsets, strict=True)):
            is_special = bool(special[k])
            row.append(
                {
                    "id": tid,
                    "text": enc.tokens[k] if is_special else text[start:stop],
                    "special": is_special,
                    "start": None if is_special else start,
                    "stop": None if is_special else stop,
                }
            )
        out.append(row)
    return out


def model_type(task: Task, *, pooling: str | None, labels: Sequence[str]) -> s.ModelType:
    """TEI's `model_type`: embedding (pooling), reranker or classifier (labels)."""
    if task is Task.EMBED:
        return {"embedding": {"pooling": pooling}}
    described = {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if task is Task.RERANK:
        return {"reranker": described}
    return {"classifier": described}


# --- OpenAI ------------------------------------------------------------------------------


def openai_embeddings(
    rows: FloatArray, *, encoding_format: Literal["float", "base64"], model: str, tokens: int
) -> s.EmbeddingsResponse:
    """OpenAI's list of embedding objects; base64 is little-endian float32, as OpenAI sends."""
    data: list[s.EmbeddingObject] = []
    for i, row in enumerate(rows):
        embedding: Any
        if encoding_format == "base64":
            embedding = base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode()
        else:
            embedding = row  # a numpy row: orjson writes it without Python floats
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_list(models: Sequence[tuple[str, Task]], *, created: int) -> s.ModelList:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "ember",
                "task": task.value,
            }
            for name, task in models
        ],
    }


# --- /v1/rerank ----------------------------------------------------------------------------


def v1_rerank(
    items: Sequence[s.RankItem],
    texts: Sequence[str],
    *,
    top_n: int | None,
    return_documents: bool,
    model: str,
    tokens: int,
) -> s.V1RerankResponse:
    """The Cohere / Jina rerank answer from TEI's ranked items."""
    results: list[s.V1RerankResult] = []
    for item in items[:top_n] if top_n is not None else items:
        entry: s.V1RerankResult = {"index": item["index"], "relevance_score": item["score"]}
        if return_documents:
            entry["document"] = {"text": texts[item["index"]]}
        results.append(entry)
    return {"model": model, "results": results, "usage": {"total_tokens": tokens}}
