"""One served model: tokenizer → batcher → backend, its lifecycle and its warm-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember import metrics
from ember.backends.base import TORCH_CPU_SEQ, Backend, DeviceOutOfMemory, FloatArray
from ember.engine.batcher import Batcher
from ember.engine.buckets import Buckets
from ember.engine.tokenizer import Direction, Encoded, Item, TextTokenizer
from ember.engine.warmup import ShapeRun, WarmupReport, plan_shapes
from ember.errors import BackendFailure, InvalidInput, NotReady, WrongTask
from ember.lifecycle import Lifecycle, Stage
from ember.models import ModelSpec, Task
from ember.settings import Settings

log = logging.getLogger("ember.engine")

# Inputs whose total size is below this are tokenised on the event loop: a thread hop costs
# more than encoding a few sentences.
_INLINE_TOKENIZE_CHARS = 4096
_WARMUP_SEED = "the quick brown fox jumps over the lazy dog"


@dataclass(frozen=True, slots=True)
class Result:
    """Rows for the inputs, in order, with the token count and phase timings."""

    rows: FloatArray
    tokens: int
    timings: dict[str, float]


class ModelEngine:
    def __init__(self, *, spec: ModelSpec, settings: Settings, gpu: bool) -> None:
        self.spec = spec
        self.settings = settings
        self.gpu = gpu
        self.lifecycle = Lifecycle(name=spec.name)
        self.tokenizer: TextTokenizer | None = None
        self.backend: Backend | None = None
        self.batcher: Batcher | None = None
        self.buckets = self._build_buckets(coarse=gpu)
        self.warmup_report: WarmupReport | None = None
        self.load_seconds: float | None = None
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def fine_buckets(self) -> bool:
        """Fine buckets and the `cover` plan suit ONNX Runtime on CPU, where a new shape is not
        cold (benchmarks/cold_shapes.py); torch (oneDNN, CUDA) plans per shape: coarse buckets,
        every one warmed."""
        return not self.gpu and (self.backend is None or self.backend.name == "onnx")

    def _build_buckets(self, *, coarse: bool) -> Buckets:
        settings = self.settings
        seq_buckets = settings.seq_buckets
        if not seq_buckets and coarse and not self.gpu:
            seq_buckets = list(TORCH_CPU_SEQ)
        return Buckets.build(
            max_length=self.spec.max_length,
            seq_buckets=seq_buckets,
            row_buckets=settings.row_buckets,
            max_tokens=settings.max_batch_tokens or (32768 if self.gpu else 1024),
            max_rows=settings.max_batch_requests or (256 if self.gpu else 32),
            gpu=coarse,
        )

    # --- lifecycle ------------------------------------------------------------------------

    def load(self, backend_factory: Any) -> None:
        """Blocking: read the tokenizer and weights. Called off the event loop."""
        started = time.perf_counter()
        self.tokenizer = TextTokenizer(
            path=self.spec.tokenizer_file, max_length=self.spec.max_length
        )
        self.backend = backend_factory(self.spec, self.settings)
        self.buckets = self._build_buckets(coarse=not self.fine_buckets)
        self.load_seconds = time.perf_counter() - started
        metrics.LOAD_SECONDS.labels(model=self.spec.name).set(self.load_seconds)

    def start(self) -> None:
        """Create the batcher on the running loop (after `load`)."""
        assert self.backend is not None and self.tokenizer is not None
        self.batcher = Batcher(
            buckets=self.buckets,
            run=self.backend.run,
            pad_id=self.tokenizer.pad_id,
            max_queued_inputs=self.settings.max_concurrent_requests,
            model_name=self.spec.name,
        )
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self.backend is not None:
            self.backend.close()

    async def warm_up(self) -> WarmupReport:
        """Warm every shape (`_warm_up_once`). On a device out-of-memory, halve the batch token
        budget, rebuild the buckets and warm again, so that an OOM surfaces here, before ready,
        never on a live request; `describe()` then reports the budget that fit."""
        while True:
            try:
                return await self._warm_up_once()
            except DeviceOutOfMemory as exc:
                budget = self.buckets.max_tokens
                lower = max(budget // 2, self.buckets.max_length)
                if lower == budget:
                    raise BackendFailure(
                        f"out of device memory even at {budget} tokens per batch"
                    ) from exc
                log.warning(
                    "%s: %s; lowering max_batch_tokens %d -> %d and warming again",
                    self.spec.name,
                    exc.message,
                    budget,
                    lower,
                )
                self.buckets = dataclasses.replace(self.buckets, max_tokens=lower)
                assert self.batcher is not None
                self.batcher.buckets = self.buckets

    async def _warm_up_once(self) -> WarmupReport:
        """Run every bucket shape through tokenizer → batcher → backend; check each output."""
        assert self.tokenizer is not None and self.batcher is not None
        plan = self.settings.warmup_plan
        if plan == "auto":
            plan = "cover" if self.fine_buckets else "full"
        shapes = plan_shapes(self.buckets, plan)
        rounds = self.settings.warmup_rounds
        report = WarmupReport(model=self.spec.name, task=self.task.value, rounds=rounds, plan=plan)
        pair = self.task is Task.RERANK
        started = time.perf_counter()
        self.batcher.shapes_run.clear()
        encodings: dict[int, list[Encoded]] = {}
        for rows, seq in shapes:
            if seq not in encodings:
                # Each warm-up text is tokenised once, by the serving tokenizer, and the encoding
                # repeated for the rows: tokenising `rows` copies added ~0.35 s to a GPU warm-up
                # of 44 shapes and warms nothing more.
                item = self.tokenizer.text_of_length(seq, seed=_WARMUP_SEED, pair=pair)
                encodings[seq] = await self._tokenize([item], truncate=True, direction="right")
            run = ShapeRun(rows=rows, seq=seq)
            for _ in range(rounds):
                t0 = time.perf_counter()
                with self._admitted(rows):
                    result = await self._run(encodings[seq] * rows)
                run.seconds.append(time.perf_counter() - t0)
                expected = (rows, self._width())
                if result.rows.shape != expected or not np.isfinite(result.rows).all():
                    raise BackendFailure(
                        f"warm-up shape {rows}x{seq} returned {result.rows.shape}, "
                        f"expected {expected} of finite values"
                    )
            metrics.WARMUP_SHAPE_SECONDS.labels(
                model=self.spec.name, task=self.task.value, rows=str(rows), seq=str(seq)
            ).set(max(run.seconds))
            report.shapes.append(run)
        report.total_seconds = time.perf_counter() - started
        emitted = set(self.batcher.shapes_run)
        report.covered = emitted == set(shapes)
        report.shape_set = len(self.buckets.shapes())
        if not report.covered:
            missing = sorted(set(shapes) - emitted)
            extra = sorted(emitted - set(shapes))
            raise BackendFailure(
                f"warm-up did not cover the shape set: missing {missing[:5]}, unplanned {extra[:5]}"
            )
        metrics.WARMUP_SECONDS.labels(model=self.spec.name).set(report.total_seconds)
        metrics.WARMUP_SHAPES.labels(model=self.spec.name).set(len(shapes))
        self.warmup_report = report
        log.info(
            "%s: warmed %d shapes x %d rounds in %.3f s",
            self.spec.name,
            len(shapes),
            rounds,
            report.total_seconds,
            extra={"model": self.spec.name, "warmup": report.to_dict()},
        )
        return report

    def _width(self) -> int:
        if self.task is Task.EMBED:
            return int(self.spec.hidden_size or self.spec.dimension or 0)
        return max(len(self.spec.labels), 1)

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

    async def _tokenize(
        self, items: list[Item], *, truncate: bool, direction: Direction
    ) -> list[Encoded]:
        assert self.tokenizer is not None
        size = sum(len(i) if isinstance(i, str) else len(i[0]) + len(i[1]) for i in items)
        if size <= _INLINE_TOKENIZE_CHARS:
            return self.tokenizer.encode(items, truncate=truncate, direction=direction)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenize_pool,
            lambda: self.tokenizer.encode(items, truncate=truncate, direction=direction),  # type: ignore[union-attr]
        )

    @contextmanager
    def _admitted(self, count: int) -> Iterator[None]:
        """Room for `count` inputs in the queue while the block runs (429 at once when full)."""
        assert self.batcher is not None
        self.batcher.admit(count)
        try:
            yield
        finally:
            self.batcher.release(count)

    async def _infer(self, items: list[Item], *, truncate: bool, direction: Direction) -> Result:
        """Admit, tokenise, batch, run."""
        with self._admitted(len(items)):
            t0 = time.perf_counter()
            encoded = await self._tokenize(items, truncate=truncate, direction=direction)
            return await self._run(encoded, tokenize_seconds=time.perf_counter() - t0)

    async def _run(self, encoded: list[Encoded], *, tokenize_seconds: float = 0.0) -> Result:
        """Run admitted, tokenised inputs through the batcher and the backend."""
        assert self.batcher is not None
        t1 = time.perf_counter()
        rows, timing = await self.batcher.submit(encoded)
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
        return Result(rows=rows, tokens=sum(e.length for e in encoded), timings=timings)

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
        prompt_name = prompt_name or self.spec.default_prompt_name
        if prompt_name is not None:
            if prompt_name not in self.spec.prompts:
                known = ", ".join(sorted(self.spec.prompts)) or "none"
                raise InvalidInput(f"unknown prompt_name {prompt_name!r}; this model has: {known}")
            prefix = self.spec.prompts[prompt_name]
            texts = [prefix + t for t in texts]
        width = self._width()
        if dimensions is not None and not 1 <= dimensions <= width:
            raise InvalidInput(f"dimensions must be between 1 and {width} for this model")
        result = await self._infer(
            list(texts), truncate=self._truncate(truncate), direction=direction
        )
        vectors = result.rows
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return Result(
            rows=vectors.astype(np.float32, copy=False),
            tokens=result.tokens,
            timings=result.timings,
        )

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
        scores = result.rows[:, :1]
        if not raw_scores:
            # exp(-x) overflows to inf below x ≈ -88 in float32: the score is then exactly 0.
            with np.errstate(over="ignore"):
                scores = (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
        return Result(rows=scores.astype(np.float32), tokens=result.tokens, timings=result.timings)

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
        logits = result.rows
        if not raw_scores:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            logits = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return Result(rows=logits.astype(np.float32), tokens=result.tokens, timings=result.timings)

    def _truncate(self, truncate: bool | None) -> bool:
        return self.settings.auto_truncate if truncate is None else truncate

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_id": self.spec.name,
            "source": self.spec.source,
            "task": self.task.value,
            "stage": self.lifecycle.stage.value,
            "max_input_length": self.spec.max_length,
            "pooling": self.spec.pooling if self.task is Task.EMBED else None,
            "dimension": self.spec.dimension,
            "labels": list(self.spec.labels) or None,
            "buckets": {
                "seq": list(self.buckets.seq),
                "rows": list(self.buckets.rows),
                "max_batch_tokens": self.buckets.max_tokens,
                "max_batch_requests": self.buckets.rows[-1],
                "shapes": len(self.buckets.shapes()),
            },
            "load_seconds": self.load_seconds,
            "warmup": self.warmup_report.to_dict() if self.warmup_report else None,
        }
        if self.lifecycle.error:
            out["error"] = self.lifecycle.error
        if self.backend is not None:
            out.update(self.backend.describe())
        return out
