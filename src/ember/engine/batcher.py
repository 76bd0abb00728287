"""Dynamic batching: a queue of tokenised inputs, padded to buckets, one worker thread.

Every round takes what is queued, groups it with `plan_batches` and runs the batches one after
another on the single inference thread; inputs arriving meanwhile wait for the next round.
Inputs of one request may land in several batches; the request resolves when all have run.
What may enter the queue is decided before, by `engine/admission.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ember import metrics
from ember.backends.base import Batch, FloatArray
from ember.engine.buckets import Buckets, plan_batches
from ember.engine.tokenizer import Encoded
from ember.errors import BackendFailure, EmberError

log = logging.getLogger("ember.engine")


@dataclass(eq=False)
class _Request:
    encoded: list[Encoded]
    future: asyncio.Future[FloatArray | list[FloatArray]]
    tokens: bool = False
    """Per-token vectors wanted (`run_tokens`): the result is one (length, hidden) per input."""
    enqueued: float = field(default_factory=time.perf_counter)
    result: FloatArray | None = None
    parts: list[FloatArray] = field(default_factory=list)
    remaining: int = 0
    started: float | None = None
    inference: float = 0.0

    def __post_init__(self) -> None:
        self.remaining = len(self.encoded)


@dataclass(frozen=True, slots=True)
class Timing:
    queue: float
    inference: float


class Batcher:
    """Owns the queue and the inference thread for one model."""

    def __init__(
        self,
        *,
        buckets: Buckets,
        run: Callable[[Batch], FloatArray],
        pad_id: int,
        model_name: str,
        run_tokens: Callable[[Batch], FloatArray] | None = None,
    ) -> None:
        self.buckets = buckets
        self._run = run
        self._run_tokens = run_tokens
        self._pad_id = pad_id
        self._name = model_name
        self._queue: deque[tuple[_Request, int]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{model_name}")
        self._task: asyncio.Task[None] | None = None
        self.shapes_run: set[tuple[int, int]] = set()
        self.record_shapes = True
        self._rows_hist = metrics.BATCH_ROWS.labels(model=model_name)
        self._tokens_hist = metrics.BATCH_TOKENS.labels(model=model_name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, encoded: list[Encoded]) -> tuple[FloatArray, Timing]:
        """Queue admitted inputs; resolves with one row per input, in order."""
        result, timing = await self._submit(encoded, tokens=False)
        assert not isinstance(result, list)
        return result, timing

    async def submit_tokens(self, encoded: list[Encoded]) -> tuple[list[FloatArray], Timing]:
        """Queue admitted inputs for their per-token vectors (the backend's `run_tokens`);
        resolves with one (length, hidden) array per input, padding removed, in order."""
        result, timing = await self._submit(encoded, tokens=True)
        assert isinstance(result, list)
        return result, timing

    async def _submit(
        self, encoded: list[Encoded], *, tokens: bool
    ) -> tuple[FloatArray | list[FloatArray], Timing]:
        if self._task is None:
            self.start()
        loop = asyncio.get_running_loop()
        request = _Request(encoded=encoded, future=loop.create_future(), tokens=tokens)
        for index in range(len(encoded)):
            self._queue.append((request, index))
        self._wakeup.set()
        result = await request.future
        started = request.started or request.enqueued
        return result, Timing(queue=started - request.enqueued, inference=request.inference)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                taken = [item for item in self._take_all() if not item[0].future.done()]
                for items in _by_output(taken):
                    lengths = [req.encoded[i].length for req, i in items]
                    for indices in plan_batches(lengths, self.buckets):
                        group = [items[i] for i in indices if not items[i][0].future.done()]
                        if not group:
                            continue
                        await self._run_batch(loop, group)

    def _take_all(self) -> list[tuple[_Request, int]]:
        items = list(self._queue)
        self._queue.clear()
        return items

    def pad(self, group: list[tuple[_Request, int]]) -> Batch:
        encs = [req.encoded[i] for req, i in group]
        rows = self.buckets.rows_for(len(encs))
        seq = self.buckets.seq_for(max(e.length for e in encs), rows=rows)
        ids = np.full((rows, seq), self._pad_id, dtype=np.int64)
        mask = np.zeros((rows, seq), dtype=np.int64)
        types = np.zeros((rows, seq), dtype=np.int64)
        for r, enc in enumerate(encs):
            n = enc.length
            ids[r, :n] = enc.ids
            mask[r, :n] = 1
            types[r, :n] = enc.type_ids
        # Padding rows attend to one token so pooling never divides by zero.
        mask[len(encs) :, 0] = 1
        return Batch(input_ids=ids, attention_mask=mask, token_type_ids=types, real_rows=len(encs))

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, group: list[tuple[_Request, int]]
    ) -> None:
        now = time.perf_counter()
        for req, _ in group:
            if req.started is None:
                req.started = now
        tokens = group[0][0].tokens
        try:
            batch = self.pad(group)
            run = self._run_tokens if tokens else self._run
            if run is None:
                raise BackendFailure("this backend does not produce per-token vectors")
            out = await loop.run_in_executor(self._executor, run, batch)
            # (rows, width), or (rows, seq, hidden) for per-token vectors
            lead = batch.shape if tokens else batch.shape[:1]
            if out.ndim != len(lead) + 1 or out.shape[: len(lead)] != lead:
                raise BackendFailure(
                    f"the backend returned shape {out.shape} for a batch of {batch.shape}"
                )
        except Exception as exc:  # one failed batch fails its requests, not the engine
            if not isinstance(exc, EmberError):
                log.exception("batch of %d inputs failed", len(group))
            error = exc if isinstance(exc, EmberError) else BackendFailure("inference failed")
            metrics.FAILURES.labels(kind=error.kind.value).inc()
            for req, _ in group:
                if not req.future.done():
                    req.future.set_exception(error)
            return
        elapsed = time.perf_counter() - now
        if self.record_shapes:
            self.shapes_run.add(batch.shape)
        self._rows_hist.observe(batch.shape[0])
        self._tokens_hist.observe(batch.shape[0] * batch.shape[1])
        for req in {id(req): req for req, _ in group}.values():
            req.inference += elapsed
        for r, (req, index) in enumerate(group):
            if req.future.done():
                continue
            if req.tokens:
                self._deliver_tokens(req, index, out[r])
                continue
            if req.result is None:
                req.result = np.empty((len(req.encoded), out.shape[1]), dtype=np.float32)
            req.result[index] = out[r]
            req.remaining -= 1
            if req.remaining == 0:
                req.future.set_result(req.result)

    @staticmethod
    def _deliver_tokens(req: _Request, index: int, hidden: FloatArray) -> None:
        """One input's (seq, hidden) rows without its padding; resolves the request when all
        of its inputs have theirs."""
        if not req.parts:
            req.parts = [np.empty((0, 0), dtype=np.float32)] * len(req.encoded)
        req.parts[index] = hidden[: req.encoded[index].length]
        req.remaining -= 1
        if req.remaining == 0:
            req.future.set_result(req.parts)


def _by_output(items: list[tuple[_Request, int]]) -> list[list[tuple[_Request, int]]]:
    """The round's inputs split by what they want, pooled rows first: a batch runs one kind."""
    if not any(req.tokens for req, _ in items):
        return [items]
    pooled = [item for item in items if not item[0].tokens]
    per_token = [item for item in items if item[0].tokens]
    return [pooled, per_token] if pooled else [per_token]
