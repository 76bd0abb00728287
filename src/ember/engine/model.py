"""One served model: its lifecycle, its loaded parts, admission and the task entry points."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tokenizers import Encoding

from ember import metrics
from ember.backends.base import Backend, FloatArray
from ember.engine import postprocess
from ember.engine.admission import vector_weight
from ember.engine.batcher import Batcher
from ember.engine.buckets import Buckets
from ember.engine.heap import release_free_heap
from ember.engine.loaded import BackendFactory, LoadedModel, load_model
from ember.engine.tokenizer import (
    Direction,
    Encoded,
    Item,
    TextTokenizer,
    check_ids,
    encode_ids,
    vocab_size,
)
from ember.engine.warmup import WarmupReport, choose_plan, warm_up
from ember.errors import InvalidInput, NotReady, WrongTask
from ember.lifecycle import Lifecycle, Stage
from ember.models import ModelSpec, Task
from ember.settings import Settings

log = logging.getLogger("ember.engine")

# Inputs whose total size is below this are tokenised on the event loop: a thread hop costs
# more than encoding a few sentences.
_INLINE_TOKENIZE_CHARS = 4096
# After this many characters of requests, the heap is trimmed when the model next goes idle:
# glibc kept what a burst of large bodies freed (RSS 205 -> 249 MB after 2 MB of inputs).
_TRIM_AFTER_CHARS = 1 << 20
_T = TypeVar("_T")


def _chars(items: list[Item]) -> int:
    return sum(len(i) if isinstance(i, str) else len(i[0]) + len(i[1]) for i in items)


@dataclass(frozen=True, slots=True)
class Result:
    """Rows for the inputs, in order, with the token count and phase timings."""

    rows: FloatArray
    tokens: int
    timings: dict[str, float]
    per_token: list[FloatArray] | None = None
    """`/embed_all`: per input, its tokens' vectors (tokens × hidden); `rows` is then empty."""


class ModelEngine:
    """A served model from `starting` on: its stage is visible while it loads; its tokenizer,
    backend and batcher exist together once `load` has built them (`loaded`)."""

    def __init__(self, *, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.lifecycle = Lifecycle(name=spec.name)
        self.names: tuple[str, ...] = (spec.name,)
        """Names that select this model: its served name first, then any aliases."""
        self.warmup_report: WarmupReport | None = None
        self._loaded: LoadedModel | None = None
        self._chars_since_trim = 0
        # Rust tokenizers release the GIL: one thread per core tokenises that many large
        # requests at once (one thread queued 40 large inputs ~100 s deep: issue 15).
        workers = settings.tokenizer_workers or settings.available_cores()
        self._tokenize_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize")

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def loaded(self) -> LoadedModel:
        """The loaded parts; 503 (not ready) before `load` has finished."""
        if self._loaded is None:
            raise NotReady(f"model {self.spec.name!r} is {self.lifecycle.stage.value}")
        return self._loaded

    @property
    def tokenizer(self) -> TextTokenizer | None:
        return self._loaded.tokenizer if self._loaded else None

    @property
    def backend(self) -> Backend | None:
        return self._loaded.backend if self._loaded else None

    @property
    def batcher(self) -> Batcher | None:
        return self._loaded.batcher if self._loaded else None

    @property
    def buckets(self) -> Buckets | None:
        return self._loaded.buckets if self._loaded else None

    @property
    def load_seconds(self) -> float | None:
        return self._loaded.load_seconds if self._loaded else None

    @property
    def queued_inputs(self) -> int:
        """Inputs admitted and not yet answered."""
        return self._loaded.admission.inputs if self._loaded else 0

    # --- lifecycle ------------------------------------------------------------------------

    def load(self, backend_factory: BackendFactory) -> None:
        """Blocking: read the tokenizer and weights. Called off the event loop."""
        self._loaded = load_model(
            spec=self.spec, settings=self.settings, backend_factory=backend_factory
        )
        metrics.LOAD_SECONDS.labels(model=self.spec.name).set(self._loaded.load_seconds)

    def start(self) -> None:
        """Start the batcher on the running loop (after `load`)."""
        self.loaded.batcher.start()

    async def stop(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self._loaded is not None:
            await self._loaded.batcher.stop()
            self._loaded.backend.close()

    async def warm_up(self) -> WarmupReport:
        """Warm the planned shapes through the request path (`engine/warmup.py`)."""
        loaded = self.loaded
        plan = choose_plan(self.settings.warmup_plan, loaded.backend.capabilities)
        self.warmup_report = await warm_up(
            loaded=loaded,
            plan=plan,
            rounds=self.settings.warmup_rounds,
            run=self._run_admitted,
            run_tokens=self._run_admitted_tokens if self.per_token else None,
        )
        return self.warmup_report

    async def _run_admitted(self, encoded: list[Encoded]) -> FloatArray:
        return (await self.run_encoded(encoded)).rows

    async def _run_admitted_tokens(self, encoded: list[Encoded]) -> list[FloatArray]:
        # Warm-up's largest shape may be over what one request may ask (413): no bound here.
        with self.loaded.admission.held(inputs=len(encoded), work=len(encoded)):
            return (await self._run(encoded, per_token=True)).per_token or []

    async def run_encoded(self, encoded: list[Encoded], *, per_token: bool = False) -> Result:
        """Already-encoded inputs (warm-up's, clients' token ids): admitted by their tokens,
        batched and run; the backend's raw rows (no post-processing), in order."""
        work = self._work(encoded, per_token=per_token)
        with self.loaded.admission.held(inputs=len(encoded), work=work):
            return await self._run(encoded, per_token=per_token)

    @property
    def per_token(self) -> bool:
        """Whether `/embed_all` is served: an embedding model (not SPLADE, as TEI) whose
        backend returns per-token vectors."""
        caps = self.backend.capabilities if self.backend else None
        return (
            self.task is Task.EMBED and not self.spec.splade and bool(caps and caps.token_outputs)
        )

    def _token_weight(self, per_token: bool) -> int:
        """Work per token: 1, or what a token's vector in the answer weighs."""
        return vector_weight(self.spec.hidden_size or self.width) if per_token else 1

    def _work(self, encoded: list[Encoded], *, per_token: bool) -> int:
        """Admission work of tokenised inputs (413 for too many per-token vectors)."""
        tokens = sum(e.length for e in encoded)
        if not per_token:
            return tokens
        admission, hidden = self.loaded.admission, self.spec.hidden_size or self.width
        return admission.vector_work(tokens, hidden=hidden, model=self.spec.name)

    # --- requests ---------------------------------------------------------------------------

    def require(self, task: Task) -> None:
        if self.task is not task:
            raise WrongTask(
                f"model {self.spec.name!r} serves {self.task.value}, not {task.value}; "
                f"use the route for {self.task.value}"
            )
        stage = self.lifecycle.stage
        if stage is not Stage.READY:
            raise NotReady(f"model {self.spec.name!r} is {stage.value}", retry_after=1)

    async def _off_loop(self, size: int, call: Callable[[], _T]) -> _T:
        """`call()` inline when `size` characters are few (a thread hop costs more than
        encoding a few sentences), else on the tokenizer threads, off the event loop."""
        if size <= _INLINE_TOKENIZE_CHARS:
            return call()
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, call)

    async def _infer(
        self, items: list[Item], *, truncate: bool, direction: Direction, per_token: bool = False
    ) -> Result:
        """Admit by work, tokenise, batch, run."""
        loaded = self.loaded
        size = _chars(items)
        # Before tokenising, an input's work is its characters plus its special tokens.
        estimate = (size + len(items) * loaded.shortest) * self._token_weight(per_token)
        with loaded.admission.held(inputs=len(items), work=estimate) as held:
            t0 = time.perf_counter()
            encoded = await self._off_loop(
                size,
                lambda: loaded.tokenizer.encode(items, truncate=truncate, direction=direction),
            )
            loaded.admission.settle(held, self._work(encoded, per_token=per_token))
            try:
                seconds = time.perf_counter() - t0
                return await self._run(encoded, tokenize_seconds=seconds, per_token=per_token)
            finally:
                self._chars_since_trim += size
                if loaded.admission.inputs == held.inputs:  # the last request held: idle next
                    self._trim_if_due()

    async def _infer_ids(
        self,
        rows: list[list[int]],
        *,
        truncate: bool,
        direction: Direction,
        per_token: bool = False,
    ) -> Result:
        """Token-id inputs: checked against the vocabulary, admitted by their length and run
        as given (never decoded and re-encoded), truncated like text."""
        loaded = self.loaded
        check_ids(rows, vocab=vocab_size(loaded.tokenizer))
        encoded = encode_ids(loaded.tokenizer, rows, truncate=truncate, direction=direction)
        return await self.run_encoded(encoded, per_token=per_token)

    def _trim_if_due(self) -> None:
        """Trim the heap on a tokenizer thread once large requests have come and gone."""
        if self._chars_since_trim >= _TRIM_AFTER_CHARS:
            self._chars_since_trim = 0
            with contextlib.suppress(RuntimeError):  # the pool is shut down: stopping anyway
                self._tokenize_pool.submit(release_free_heap)

    async def tokenize(
        self, items: list[Item], *, add_special_tokens: bool = True
    ) -> list[Encoding]:
        """`/tokenize`: full encodings (tokens, offsets), admitted by work like inference and
        computed off the event loop when large (a near-limit body stalled probes for 2 s)."""
        loaded = self.loaded
        size = _chars(items)
        with loaded.admission.held(inputs=len(items), work=size):
            return await self._off_loop(
                size,
                lambda: loaded.tokenizer.tokenize(items, add_special_tokens=add_special_tokens),
            )

    async def _run(
        self, encoded: list[Encoded], *, tokenize_seconds: float = 0.0, per_token: bool = False
    ) -> Result:
        """Run admitted, tokenised inputs through the batcher and the backend."""
        t1 = time.perf_counter()
        batcher, parts = self.loaded.batcher, None
        if per_token:
            parts, timing = await batcher.submit_tokens(encoded)
            rows = np.empty((len(encoded), 0), dtype=np.float32)
        else:
            rows, timing = await batcher.submit(encoded)
        total = tokenize_seconds + time.perf_counter() - t1
        timings = {
            "tokenize": tokenize_seconds,
            "queue": timing.queue,
            "inference": timing.inference,
            "total": total,
        }
        for phase, seconds in timings.items():
            metrics.REQUEST_LATENCY.labels(model=self.spec.name, phase=phase).observe(seconds)
        metrics.INPUTS.labels(model=self.spec.name, task=self.task.value).inc(len(encoded))
        tokens = sum(e.length for e in encoded)
        return Result(rows=rows, tokens=tokens, timings=timings, per_token=parts)

    @property
    def width(self) -> int:
        """Columns of the backend's rows: hidden size (embed) or labels."""
        return self.loaded.backend.capabilities.output_width

    async def embed(
        self,
        texts: list[str],
        *,
        normalize: bool = True,
        truncate: bool | None = None,
        direction: Direction = "right",
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Result:
        self.require(Task.EMBED)
        self._check_normalize(normalize)
        texts = postprocess.with_prompt(
            texts, prompts=self.spec.prompts, name=prompt_name or self.spec.default_prompt_name
        )
        postprocess.check_dimensions(dimensions, self.width)
        items: list[Item] = list(texts)
        result = await self._infer(items, truncate=self._truncate(truncate), direction=direction)
        rows = postprocess.embeddings(result.rows, dimensions=dimensions, normalize=normalize)
        return Result(rows=rows, tokens=result.tokens, timings=result.timings)

    async def embed_ids(
        self,
        rows: list[list[int]],
        *,
        normalize: bool = True,
        truncate: bool | None = None,
        direction: Direction = "right",
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Result:
        """`embed` for token-id inputs (OpenAI's and TEI's `list[int]` forms)."""
        self.require(Task.EMBED)
        self._check_normalize(normalize)
        if prompt_name is not None:
            raise InvalidInput("`prompt_name` applies to text; token-id inputs are used as given")
        postprocess.check_dimensions(dimensions, self.width)
        result = await self._infer_ids(rows, truncate=self._truncate(truncate), direction=direction)
        out = postprocess.embeddings(result.rows, dimensions=dimensions, normalize=normalize)
        return Result(rows=out, tokens=result.tokens, timings=result.timings)

    async def embed_all(
        self,
        texts: list[str],
        id_rows: list[list[int]],
        *,
        truncate: bool | None = None,
        direction: Direction = "right",
        prompt_name: str | None = None,
    ) -> Result:
        """TEI's `/embed_all` for `texts`, or else token-id rows: per input, the last hidden
        state of each of its tokens (special and prompt tokens included, padding removed), raw:
        not pooled, normalised or projected by Dense modules (`Result.per_token`)."""
        self.require(Task.EMBED)
        if self.spec.splade:  # TEI's rule and message
            raise WrongTask("`embed_all` is not available for SPLADE models: use /embed_sparse")
        if not self.per_token:
            raise WrongTask(
                f"model {self.spec.name!r} is served by a backend that does not return per-token "
                "vectors (the server log says why); /embed serves its pooled vectors"
            )
        truncating = self._truncate(truncate)
        if id_rows:
            if prompt_name is not None:
                raise InvalidInput("`prompt_name` applies to text; token ids are used as given")
            return await self._infer_ids(
                id_rows, truncate=truncating, direction=direction, per_token=True
            )
        name = prompt_name or self.spec.default_prompt_name
        items: list[Item] = list(
            postprocess.with_prompt(texts, prompts=self.spec.prompts, name=name)
        )
        return await self._infer(items, truncate=truncating, direction=direction, per_token=True)

    async def rerank(
        self,
        query: str,
        texts: list[str],
        *,
        raw_scores: bool = False,
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> Result:
        self.require(Task.RERANK)
        result = await self._infer(
            [(query, t) for t in texts], truncate=self._truncate(truncate), direction=direction
        )
        rows = postprocess.rerank_scores(result.rows, raw=raw_scores)
        return Result(rows=rows, tokens=result.tokens, timings=result.timings)

    async def classify(
        self,
        items: list[Item],
        *,
        raw_scores: bool = False,
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> Result:
        self.require(Task.CLASSIFY)
        result = await self._infer(items, truncate=self._truncate(truncate), direction=direction)
        rows = postprocess.class_scores(result.rows, raw=raw_scores)
        return Result(rows=rows, tokens=result.tokens, timings=result.timings)

    async def classify_ids(
        self,
        rows: list[list[int]],
        *,
        raw_scores: bool = False,
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> Result:
        """`classify` for token-id inputs."""
        self.require(Task.CLASSIFY)
        result = await self._infer_ids(rows, truncate=self._truncate(truncate), direction=direction)
        out = postprocess.class_scores(result.rows, raw=raw_scores)
        return Result(rows=out, tokens=result.tokens, timings=result.timings)

    def _check_normalize(self, normalize: bool) -> None:
        """TEI's rule: a SPLADE vector is never L2-normalised (424 on `normalize=true`)."""
        if normalize and self.spec.splade:
            raise WrongTask(
                "`normalize` is not available for SPLADE models: use /embed_sparse, or "
                "/embed with normalize=false for the dense vocabulary-sized vector"
            )

    def _truncate(self, truncate: bool | None) -> bool:
        return self.settings.auto_truncate if truncate is None else truncate

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_id": self.spec.name,
            "source": self.spec.source,
            "task": self.task.value,
            "stage": self.lifecycle.stage.value,
            "max_input_length": self.spec.max_length,
            # From the spec, so every backend names them (an artifact's manifest holds it).
            "family": self.spec.model_type,
            "architecture": self.spec.architecture,
            "pooling": self.spec.pooling if self.task is Task.EMBED else None,
            "dimension": self.spec.dimension,
            "dense": [layer.to_dict() for layer in self.spec.dense] or None,
            "labels": list(self.spec.labels) or None,
            "buckets": None,
            "load_seconds": self.load_seconds,
            "warmup": self.warmup_report.to_dict() if self.warmup_report else None,
        }
        if self.lifecycle.error:
            out["error"] = self.lifecycle.error
        if self._loaded is not None:
            out["buckets"] = self._loaded.buckets.describe()
            out.update(self._loaded.backend.describe())
        return out
