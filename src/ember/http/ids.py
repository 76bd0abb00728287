"""Token-id inputs (`list[int]` or `list[list[int]]`, as OpenAI and TEI accept): checked
against the vocabulary, sent to the model as ids (never decoded and re-encoded).

The engine's public calls take texts, so this runs ids through the model's own batcher and
applies the same post-processing; it belongs in the engine once its split lands (a
`ModelEngine.embed_ids`), and the routes would then call that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ember.backends.base import FloatArray
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
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise NotReady(f"model {model.spec.name!r} is {model.lifecycle.stage.value}")
    shaping.check_ids(rows, vocab=vocab_size(tokenizer))
    auto = model.settings.auto_truncate if truncate is None else truncate
    encoded = encode_ids(tokenizer, rows, truncate=auto, direction=direction)
    # Admitted by work (their tokens), batched and run by the engine.
    result = await model.run_encoded(encoded)
    return IdResult(rows=result.rows, tokens=result.tokens, timings=result.timings)


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
    width = int(model.spec.hidden_size or model.spec.dimension or 0)
    if dimensions is not None and width and not 1 <= dimensions <= width:
        raise InvalidInput(f"dimensions must be between 1 and {width} for this model")
    result = await _run(model, Task.EMBED, rows, truncate=truncate, direction=direction)
    vectors = result.rows[:, :dimensions] if dimensions is not None else result.rows
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return IdResult(
        rows=np.ascontiguousarray(vectors, dtype=np.float32),
        tokens=result.tokens,
        timings=result.timings,
    )


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
    logits = result.rows
    if not raw_scores:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = shifted / shifted.sum(axis=1, keepdims=True)
    return IdResult(rows=logits.astype(np.float32), tokens=result.tokens, timings=result.timings)
