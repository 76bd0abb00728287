"""What the backend tests share: padded batches like the batcher's, cosines, and the checks
both CUDA backends (torch, CuPy) must pass (their callers are skipped without CUDA)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from ember.backends.base import Batch
from ember.engine.buckets import Buckets
from ember.engine.tokenizer import Item, TextTokenizer
from ember.models import ModelSpec
from ember.settings import Settings

PAIRS = [
    ("what is ember?", "an embedding server that is warm before it is ready"),
    ("what is ember?", "the glowing remains of a fire"),
    ("capital of france", "Paris is the capital of France."),
]


def batch_of(spec: ModelSpec, items: list[Item], *, rows: int | None = None, seq: int = 0) -> Batch:
    """Tokenise and right-pad like the batcher: padding rows attend to their first token."""
    tokenizer = TextTokenizer(path=spec.tokenizer_file, max_length=spec.max_length)
    encoded = tokenizer.encode(items)
    rows = rows or len(encoded) + 1
    seq = max(seq, *(e.length for e in encoded))
    ids = np.full((rows, seq), tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    types = np.zeros((rows, seq), dtype=np.int64)
    for row, enc in enumerate(encoded):
        ids[row, : enc.length] = enc.ids
        mask[row, : enc.length] = 1
        types[row, : enc.length] = enc.type_ids
    mask[len(encoded) :, 0] = 1
    return Batch(input_ids=ids, attention_mask=mask, token_type_ids=types, real_rows=len(encoded))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out: np.ndarray = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return out


SMALL_BUCKETS = Buckets.build(
    max_length=256,
    seq_buckets=[16, 64, 256],
    row_buckets=[],
    max_tokens=4096,
    max_rows=32,
    pads_rows=True,
)


def graphs_match_eager(spec: ModelSpec, graphs: Any, eager: Any, texts: list[str]) -> None:
    """Run every shape (largest first, as warm-up does) on the graph backend, then check that
    each replay equals an eager forward of new data: graphs share their memory, so a graph
    that read or wrote another's buffers would show here."""
    for rows, seq in SMALL_BUCKETS.shapes():
        graphs.run(batch_of(spec, texts[:rows], rows=rows, seq=seq))
    for rows, seq in reversed(SMALL_BUCKETS.shapes()):
        batch = batch_of(spec, texts[:rows][::-1], rows=rows, seq=seq)
        assert cosines(graphs.run(batch), eager.run(batch)).min() >= 0.9999


def warm_up_under_a_memory_cap(factory: Callable[[ModelSpec, Settings], Any]) -> tuple[str, int]:
    """Start the built-in model through the real engine with `factory`, which caps device
    memory after loading; returns the stage reached and the max batch tokens chosen."""
    from ember.engine.registry import Engines

    async def go() -> tuple[str, int]:
        engines = Engines(Settings(model=["builtin"]), backend_factory=factory)
        await engines.start()
        model = engines.models[0]
        stage, tokens = engines.stage.value, model.describe()["buckets"]["max_batch_tokens"]
        await engines.stop()
        return stage, tokens

    return asyncio.run(go())
