"""Token-id inputs (`list[int]` or `list[list[int]]`, as OpenAI and TEI accept): checked
against the vocabulary, sent to the model as ids (never decoded and re-encoded).

The engine's public calls take texts, so this runs ids through the model's own batcher and the
engine's post-processing (`engine/postprocess.py`); it belongs in the engine as a
`ModelEngine.embed_ids` / `classify_ids`, and the routes would then call those.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ember.backends.base import FloatArray
from ember.engine import postprocess
from ember.engine.model import ModelEngine
from ember.engine.tokenizer import Direction, encode_ids, vocab_size
from ember.errors import InvalidInput, NotReady
from ember.http import shaping
from ember.models import Task


@dataclass(frozen=True, slots=True)
class IdResult:
    """Rows for id inputs, with the tokens they took and TEI's phase timings."""

    rows: FloatArray
    tokens: int
    timings: dict[str, float]


async def _run(
    model: ModelEngine,
    task: Task,
    rows: list[list[int]],
    *,
    truncate: bool | None,
    direction: Direction,
) -> IdResult:
    model.require(task)
    tokenizer, batcher = model.tokenizer, model.batcher
    if tokenizer is None or batcher is None:
        raise NotReady(f"model {model.spec.name!r} is {model.lifecycle.stage.value}")
    shaping.check_ids(rows, vocab=vocab_size(tokenizer))
    auto = model.settings.auto_truncate if truncate is None else truncate
    encoded = encode_ids(tokenizer, rows, truncate=auto, direction=direction)
    batcher.admit(len(encoded))
    try:
        started = time.perf_counter()
        out, timing = await batcher.submit(encoded)
    finally:
        batcher.release(len(encoded))
    timings = {
        "tokenize": 0.0,
        "queue": timing.queue,
        "inference": timing.inference,
        "total": time.perf_counter() - started,
    }
    return IdResult(rows=out, tokens=sum(e.length for e in encoded), timings=timings)


async def embed(
    model: ModelEngine,
    rows: list[list[int]],
    *,
    normalize: bool = True,
    truncate: bool | None = None,
    direction: Direction = "right",
    dimensions: int | None = None,
    prompt_name: str | None = None,
) -> IdResult:
    """Embed id inputs as `ModelEngine.embed` embeds texts (Matryoshka cut, then normalise)."""
    if prompt_name is not None:
        raise InvalidInput("`prompt_name` applies to text; token-id inputs are used as given")
    postprocess.check_dimensions(dimensions, model.width)
    result = await _run(model, Task.EMBED, rows, truncate=truncate, direction=direction)
    vectors = postprocess.embeddings(result.rows, dimensions=dimensions, normalize=normalize)
    return IdResult(rows=vectors, tokens=result.tokens, timings=result.timings)


async def classify(
    model: ModelEngine,
    rows: list[list[int]],
    *,
    raw_scores: bool = False,
    truncate: bool | None = None,
    direction: Direction = "right",
) -> IdResult:
    """Classify id inputs as `ModelEngine.classify` classifies texts (softmax unless raw)."""
    result = await _run(model, Task.CLASSIFY, rows, truncate=truncate, direction=direction)
    scores = postprocess.class_scores(result.rows, raw=raw_scores)
    return IdResult(rows=scores, tokens=result.tokens, timings=result.timings)
