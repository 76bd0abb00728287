"""Warm-up's out-of-memory fallback: the token budget is halved until every shape fits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ember.backends.base import GPU_SEQ, Batch, Capabilities, DeviceOutOfMemory, FloatArray
from ember.engine.registry import Engines
from ember.models import ModelSpec
from ember.settings import Settings


class TightBackend:
    """Raises DeviceOutOfMemory for batches over `fits` padded tokens, like a small GPU."""

    name = "tight"

    def __init__(self, spec: ModelSpec, fits: int) -> None:
        self.width = spec.hidden_size or 8
        self.capabilities = Capabilities(
            device="cuda",
            lengths="coarse",
            seq_buckets=GPU_SEQ,
            pads_rows=True,
            output_width=self.width,
            oom=DeviceOutOfMemory,
        )
        self.fits = fits
        self.shapes: list[tuple[int, int]] = []

    def run(self, batch: Batch) -> FloatArray:
        rows, seq = batch.shape
        if rows * seq > self.fits:
            raise DeviceOutOfMemory(f"the GPU ran out of memory for a batch of {rows}x{seq}")
        self.shapes.append((rows, seq))
        return np.ones((rows, self.width), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "fake", "dtype": "float32", "threads": None}

    def close(self) -> None:
        pass


async def _start(fits: int) -> tuple[Engines, TightBackend]:
    backends: list[TightBackend] = []

    def factory(spec: ModelSpec, settings: Settings) -> TightBackend:
        backends.append(TightBackend(spec, fits))
        return backends[-1]

    settings = Settings(max_batch_tokens=4096, max_batch_requests=64, seq_buckets=[16, 64, 128])
    engines = Engines(settings, backend_factory=factory)
    await engines.start()
    return engines, backends[0]


@pytest.mark.anyio
async def test_budget_is_halved_until_warm_up_fits() -> None:
    engines, backend = await _start(fits=1500)
    try:
        assert engines.stage.value == "ready"
        model = engines.models[0]
        assert model.loaded.buckets.max_tokens == 1024
        assert model.describe()["buckets"]["max_batch_tokens"] == 1024
        assert max(r * s for r, s in backend.shapes) <= 1024
        assert model.warmup_report is not None and model.warmup_report.covered
    finally:
        await engines.stop()


@pytest.mark.anyio
async def test_fails_when_not_even_one_row_fits() -> None:
    engines, _ = await _start(fits=64)
    try:
        assert engines.stage.value == "failed"
        assert "out of device memory" in (engines.lifecycle.error or "")
    finally:
        await engines.stop()
