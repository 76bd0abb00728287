"""A loaded model: tokenizer, backend, buckets and batcher, built together by one factory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from ember.backends.base import Backend
from ember.engine.admission import Admission
from ember.engine.batcher import Batcher
from ember.engine.buckets import Buckets
from ember.engine.tokenizer import TextTokenizer
from ember.models import ModelSpec, Task
from ember.settings import Settings

BackendFactory = Callable[[ModelSpec, Settings], Backend]
"""Builds the backend for a model (blocking: reads weights, creates sessions)."""


def shortest_input(tokenizer: TextTokenizer, task: Task) -> int:
    """Tokens of the shortest input `task` takes: a text (embed), a pair (rerank), either
    (classify takes texts and pairs)."""
    single = tokenizer.shortest(pair=False)
    pair = tokenizer.shortest(pair=True)
    if task is Task.EMBED:
        return single
    if task is Task.RERANK:
        return pair
    return min(single, pair)


@dataclass(kw_only=True, slots=True)
class LoadedModel:
    """Everything a model needs to serve; built by `load_model`, so nothing is missing."""

    spec: ModelSpec
    tokenizer: TextTokenizer
    backend: Backend
    batcher: Batcher
    admission: Admission
    shortest: int
    """Tokens of the shortest input of the model's task (the first length bucket)."""
    load_seconds: float

    @property
    def buckets(self) -> Buckets:
        """The shapes the batcher pads to (changed only by warm-up's out-of-memory fallback)."""
        return self.batcher.buckets

    def lower_budget(self, max_tokens: int) -> None:
        """Batch at most `max_tokens` padded tokens from now on."""
        self.batcher.buckets = dataclasses.replace(self.buckets, max_tokens=max_tokens)


def load_model(
    *, spec: ModelSpec, settings: Settings, backend_factory: BackendFactory
) -> LoadedModel:
    """Blocking: read the tokenizer and weights; buckets come from the backend's capabilities
    and the task's shortest input. The batcher starts later, on the event loop."""
    started = time.perf_counter()
    tokenizer = TextTokenizer(path=spec.tokenizer_file, max_length=spec.max_length)
    backend = backend_factory(spec, settings)
    shortest = min(shortest_input(tokenizer, spec.task), spec.max_length)
    buckets = Buckets.for_backend(
        backend.capabilities, settings, max_length=spec.max_length, min_length=shortest
    )
    batcher = Batcher(
        buckets=buckets,
        run=backend.run,
        pad_id=tokenizer.pad_id,
        model_name=spec.name,
        run_tokens=backend.run_tokens if backend.capabilities.token_outputs else None,
    )
    admission = Admission(
        max_inputs=settings.max_concurrent_requests,
        max_work=settings.max_queued_tokens,
        model_name=spec.name,
    )
    return LoadedModel(
        spec=spec,
        tokenizer=tokenizer,
        backend=backend,
        batcher=batcher,
        admission=admission,
        shortest=shortest,
        load_seconds=time.perf_counter() - started,
    )
