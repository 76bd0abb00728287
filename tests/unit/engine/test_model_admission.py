"""A model admits by work and tokenises large inputs off the event loop (issue 15, items 4-5)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ember.engine.model import ModelEngine
from ember.errors import Overloaded
from ember.lifecycle import Stage
from ember.models import inspect_model
from ember.settings import Settings
from tests.fakes import FakeFactory

pytestmark = pytest.mark.anyio


async def _model(**settings: object) -> ModelEngine:
    config = Settings(warmup=False, **settings)  # type: ignore[arg-type]
    model = ModelEngine(spec=inspect_model("builtin"), settings=config)
    model.lifecycle.to(Stage.LOADING)
    model.load(FakeFactory(delay=0.2))
    model.start()
    model.lifecycle.to(Stage.READY)
    return model


async def test_large_inputs_count_their_size_not_one_slot() -> None:
    model = await _model(max_queued_tokens=150_000)
    try:
        big = "word " * 20_000  # 100,000 characters: one input, but 100,000 of work
        first = asyncio.create_task(model.embed([big]))
        await asyncio.sleep(0.05)  # admitted and queued behind the 0.2 s fake batch
        with pytest.raises(Overloaded, match="150000 queued tokens"):
            await model.embed([big])
        small = await model.embed(["a short text"])  # small work still fits
        assert small.rows.shape[0] == 1
        await first
        assert model.queued_inputs == 0 and model.loaded.admission.work == 0
    finally:
        await model.stop()


async def test_tokenising_a_large_input_leaves_the_event_loop_free() -> None:
    model = await _model(tokenizer_workers=1)
    text = "tokenizers split text into pieces " * 12_000  # ~400 KB
    try:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        started = time.perf_counter()
        await model.tokenize([text])
        took = time.perf_counter() - started
        done.set()
        await ticking
        # Inline, the loop would stall for the whole tokenisation.
        assert max(gaps) < took / 2, (max(gaps), took)
    finally:
        await model.stop()


async def test_the_heap_is_trimmed_once_large_requests_have_come_and_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[float] = []
    monkeypatch.setattr("ember.engine.model.release_free_heap", lambda: trims.append(1.0))
    monkeypatch.setattr("ember.engine.model._TRIM_AFTER_CHARS", 50_000)
    model = await _model()
    try:
        await model.embed(["small"] * 4)
        assert trims == []  # little text: no trim
        await asyncio.gather(model.embed(["word " * 8_000]), model.embed(["word " * 8_000]))
        await asyncio.sleep(0.1)  # the trim runs on a tokenizer thread
        assert trims == [1.0]  # once, when the second (last) request finished
    finally:
        await model.stop()
