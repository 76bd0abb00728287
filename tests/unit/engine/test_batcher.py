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


def hidden_of_ids(batch: Batch) -> FloatArray:
    """Per-token outputs: each token's vector is (id, position), padding included."""
    rows, seq = batch.shape
    positions = np.broadcast_to(np.arange(seq, dtype=np.float32), (rows, seq))
    return np.stack([batch.input_ids.astype(np.float32), positions], axis=-1)


async def test_per_token_requests_get_their_tokens_without_padding_beside_pooled_ones() -> None:
    buckets = Buckets.build(
        max_length=64, seq_buckets=[8, 16, 32], row_buckets=[], max_tokens=64, max_rows=4
    )
    batcher = Batcher(
        buckets=buckets, run=first_token, pad_id=0, model_name="t", run_tokens=hidden_of_ids
    )
    batcher.start()
    try:
        lengths = [3, 60, 10, 5, 33, 2]
        tokens = batcher.submit_tokens([enc(i + 1, n) for i, n in enumerate(lengths)])
        pooled = batcher.submit([enc(9, 4), enc(8, 20)])
        (parts, _), (rows, _) = await asyncio.gather(tokens, pooled)
        assert rows[:, 0].tolist() == [9.0, 8.0]  # the pooled request is not disturbed
        assert [p.shape for p in parts] == [(n, 2) for n in lengths]
        for i, part in enumerate(parts):
            assert (part[:, 0] == i + 1).all()  # its own tokens, in order, padding cut
            assert part[:, 1].tolist() == list(range(lengths[i]))
    finally:
        await batcher.stop()


async def test_per_token_requests_fail_cleanly_without_a_per_token_run() -> None:
    batcher = make_batcher()
    batcher.start()
    try:
        with pytest.raises(BackendFailure, match="per-token"):
            await batcher.submit_tokens([enc(3, 4)])
        rows, _ = await batcher.submit([enc(5, 4)])  # the batcher still serves
        assert rows[0, 0] == 5.0
    finally:
        await batcher.stop()
