"""Pure functions from engine results to response bodies (the shapes in `schemas`).

No I/O and no engine: each takes arrays, labels and request options, so each is unit-tested
alone (tests/unit/http/test_shaping.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.responses import Response
from tokenizers import Encoding

from ember.backends.base import FloatArray
from ember.engine.tokenizer import TIKTOKEN_HINT, Item
from ember.errors import InvalidInput, TooLarge
from ember.http import quantize
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


def split_inputs(
    value: str | list[str] | list[int] | list[list[int]], *, limit: int
) -> tuple[list[str], list[list[int]]]:
    """(texts, token-id rows): exactly one is non-empty, with at most `limit` inputs."""
    if isinstance(value, list) and value and not isinstance(value[0], str):
        rows = id_rows(value)
        _check_count(len(rows), limit=limit)
        return [], rows
    return as_list(value, limit=limit), []  # type: ignore[arg-type]


def predict_items(inputs: s.PredictTexts, *, limit: int) -> tuple[list[Item], bool]:
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


def characters(items: Sequence[Item]) -> int:
    return sum(len(i) if isinstance(i, str) else len(i[0]) + len(i[1]) for i in items)


def timing_headers(timings: Mapping[str, float], *, tokens: int, chars: int) -> dict[str, str]:
    """TEI's response headers: integer milliseconds per phase, tokens and characters computed.
    `x-compute-time` and `x-total-time` are both the engine's total, as in TEI (which times
    them from the same start)."""
    total = str(int(timings.get("total", 0.0) * 1000))
    return {
        "x-compute-time": total,
        "x-total-time": total,
        "x-tokenization-time": str(int(timings.get("tokenize", 0.0) * 1000)),
        "x-queue-time": str(int(timings.get("queue", 0.0) * 1000)),
        "x-inference-time": str(int(timings.get("inference", 0.0) * 1000)),
        "x-compute-tokens": str(tokens),
        "x-compute-characters": str(chars),
    }


# --- TEI ---------------------------------------------------------------------------------


def embeddings(rows: FloatArray) -> FloatArray:
    """Rows orjson can serialise: a column slice (`dimensions`) is not C-contiguous."""
    return np.ascontiguousarray(rows, dtype=np.float32)


def token_vectors(per_input: Sequence[FloatArray]) -> list[FloatArray]:
    """TEI's `/embed_all` answer: per input, its (tokens, hidden) array, which orjson writes as
    a list of float lists without a Python float per value (ragged: one length per input)."""
    return [embeddings(vectors) for vectors in per_input]


def sparse(rows: FloatArray) -> list[list[s.SparseValue]]:
    """TEI's `/embed_sparse` answer: per row, its non-zero entries by ascending index."""
    out: list[list[s.SparseValue]] = []
    for row in rows:
        (nonzero,) = np.nonzero(row)
        values = row[nonzero].tolist()
        out.append(
            [{"index": int(i), "value": v} for i, v in zip(nonzero.tolist(), values, strict=True)]
        )
    return out


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


def phase_seconds(*, load: float, warmup: float) -> s.PhaseSeconds:
    """`/ready`'s load and warm-up figures, in seconds rounded to the millisecond."""
    return {"load_seconds": round(load, 3), "warmup_seconds": round(warmup, 3)}


def id_rows(ids: list[int] | list[list[int]]) -> list[list[int]]:
    """One id list, or a list of them, as a list of lists."""
    rows: list[list[int]] = []
    flat: list[int] = []
    for entry in ids:
        if isinstance(entry, list):
            rows.append(entry)
        else:
            flat.append(entry)
    return rows if rows else [flat]


OPENAI_MODEL_PREFIX = "text-embedding-"
"""OpenAI's embedding model names (`text-embedding-ada-002`, `text-embedding-3-small`, ...)."""


def check_tiktoken_ids(requested: str | None, *, served: Sequence[str]) -> None:
    """Token ids sent for an OpenAI model name that this server does not serve were made by
    tiktoken (langchain-openai's default): a 422 with the hint, even when every id happens to
    be inside the vocabulary (common words are, and would silently embed the wrong tokens)."""
    if requested and requested.startswith(OPENAI_MODEL_PREFIX) and requested not in served:
        raise InvalidInput(
            f"token ids sent for model {requested!r}, which is served here by {served[0]!r}"
            f"{TIKTOKEN_HINT}"
        )


def check_unicode(texts: Sequence[str]) -> None:
    """A lone surrogate (valid JSON `\\ud800`, not encodable text) is a 422, not a tokenizer
    crash."""
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"input {index} is not valid Unicode (a lone surrogate at character "
                f"{exc.start}); send UTF-8 text"
            ) from None


def similarities(rows: FloatArray) -> list[float]:
    """Cosine of rows 1.. to row 0 (the source sentence); rows are unit length."""
    return [float(x) for x in rows[1:] @ rows[0]]


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


Encoded = npt.NDArray[Any] | list[str]
"""Rows of one embedding type: a numpy array (float or quantised) or base64 strings."""


def encoded(
    rows: FloatArray, kind: quantize.EmbeddingType, *, bounds: FloatArray | None
) -> Encoded:
    """Rows in one embedding type: numpy rows (orjson writes them without Python numbers) or
    base64 strings."""
    if kind == "base64":
        return quantize.as_base64(rows)
    if kind == "float":
        return embeddings(rows)
    return quantize.quantize(rows, kind, bounds=bounds)


def openai_embeddings(rows: Encoded, *, model: str, tokens: int) -> s.EmbeddingsResponse:
    """OpenAI's list of embedding objects, from rows already in the requested encoding."""
    data: list[s.EmbeddingObject] = [
        {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
    ]
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
    document_as_text: bool = False,
) -> s.V1RerankResponse:
    """The Cohere / Jina rerank answer from TEI's ranked items; Infinity's answer is the same
    but for each `document`, a plain string there (`document_as_text`)."""
    results: list[s.V1RerankResult] = []
    for item in items[:top_n] if top_n is not None else items:
        entry: s.V1RerankResult = {"index": item["index"], "relevance_score": item["score"]}
        if return_documents:
            text = texts[item["index"]]
            entry["document"] = text if document_as_text else {"text": text}
        results.append(entry)
    return {"model": model, "results": results, "usage": {"total_tokens": tokens}}


# --- Cohere v2 -----------------------------------------------------------------------------


def _cohere_meta(*, tokens: int, search_units: int = 0) -> s.CohereMeta:
    billed = {"input_tokens": tokens} | ({"search_units": search_units} if search_units else {})
    return {"api_version": {"version": "2"}, "billed_units": billed}


def cohere_rerank(
    items: Sequence[s.RankItem],
    texts: Sequence[str],
    *,
    top_n: int | None,
    return_documents: bool,
    tokens: int,
) -> s.CohereRerankResponse:
    v1 = v1_rerank(
        items, texts, top_n=top_n, return_documents=return_documents, model="", tokens=tokens
    )
    return {
        "id": str(uuid.uuid4()),
        "results": v1["results"],
        "meta": _cohere_meta(tokens=tokens, search_units=1),
    }


def cohere_embed(
    by_type: Mapping[str, Encoded], texts: Sequence[str], *, tokens: int
) -> s.CohereEmbedResponse:
    return {
        "id": str(uuid.uuid4()),
        "embeddings": {kind: list(rows) for kind, rows in by_type.items()},
        "texts": list(texts),
        "meta": _cohere_meta(tokens=tokens),
        "response_type": "embeddings_by_type",
    }
