"""The batcher resolves the right futures in order, splits and reassembles, bounds its queue."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ember.backends.base import Batch, FloatArray
from ember.engine.batcher import Batcher
from ember.engine.buckets import Buckets
from ember.engine.tokenizer import Encoded
from ember.errors import BackendFailure

pytestmark = pytest.mark.anyio


def first_token(batch: Batch) -> FloatArray:
    """Each row's output is its first real token id, so order can be checked."""
    return batch.input_ids[:, :1].astype(np.float32)


def make_batcher(run=first_token) -> Batcher:  # type: ignore[no-untyped-def]
    buckets = Buckets.build(
        max_length=64, seq_buckets=[8, 16, 32], row_buckets=[], max_tokens=64, max_rows=4
    )
    return Batcher(buckets=buckets, run=run, pad_id=0, model_name="t")


def enc(token: int, length: int) -> Encoded:
    return Encoded(ids=[token] * length, type_ids=[0] * length)


async def test_results_come_back_in_request_order_across_batches() -> None:
    batcher = make_batcher()
    batcher.start()
    try:
        items = [enc(i + 1, length) for i, length in enumerate([3, 60, 10, 5, 33, 2, 17, 8, 9])]
        rows, timing = await batcher.submit(items)
        assert rows[:, 0].tolist() == [float(i + 1) for i in range(len(items))]
        assert timing.inference > 0
        assert all(r <= 4 and (r == 1 or r * s <= 64) for r, s in batcher.shapes_run)
    finally:
        await batcher.stop()


async def test_concurrent_requests_get_their_own_rows() -> None:
    batcher = make_batcher()
    batcher.start()
    try:

        async def one(token: int) -> list[float]:
            rows, _ = await batcher.submit([enc(token, 4), enc(token, 12)])
            return rows[:, 0].tolist()

        results = await asyncio.gather(*(one(t) for t in range(1, 30)))
        assert results == [[float(t), float(t)] for t in range(1, 30)]
    finally:
        await batcher.stop()


async def test_a_failing_batch_fails_only_its_requests() -> None:
    def run(batch: Batch) -> FloatArray:
        if (batch.input_ids == 13).any():
            raise RuntimeError("boom")
        return first_token(batch)

    batcher = make_batcher(run=run)
    batcher.start()
    try:
        with pytest.raises(BackendFailure):
            await batcher.submit([enc(13, 4)])
        rows, _ = await batcher.submit([enc(5, 4)])
        assert rows[0, 0] == 5.0
    finally:
        await batcher.stop()


async def test_a_cancelled_request_is_skipped() -> None:
    calls: list[int] = []

    def run(batch: Batch) -> FloatArray:
        calls.append(batch.real_rows)
        return first_token(batch)

    batcher = make_batcher(run=run)
    task = asyncio.create_task(batcher.submit([enc(1, 4)] * 3))
    await asyncio.sleep(0)
    task.cancel()
    batcher.start()
    rows, _ = await batcher.submit([enc(2, 4)])
    assert rows[0, 0] == 2.0
    assert calls == [1]
    await batcher.stop()
