"""A fake backend for app-level tests: deterministic vectors, controllable delay and faults."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np

from ember.backends.base import TORCH_CPU_SEQ, Batch, Capabilities, FloatArray
from ember.errors import ModelError
from ember.models import ModelSpec, Task
from ember.settings import Settings

POISON = 7777
"""A token id; a batch holding it raises inside the backend (a fault in one batch)."""


CPU_EXACT = Capabilities(
    device="cpu", lengths="exact", warm="cover", output_width=0, token_outputs=True
)
"""Batches like ONNX Runtime on CPU, the default backend: every length a shape, a cover warmed."""
CPU_COARSE = Capabilities(
    device="cpu",
    lengths="coarse",
    seq_buckets=TORCH_CPU_SEQ,
    pads_rows=True,
    warm="all",
    output_width=0,
    token_outputs=True,
)
"""Batches like torch on CPU: ~1.5x length steps, power-of-two rows, every shape warmed."""


class FakeBackend:
    """Each row's vector is a function of its token ids, so results can be checked. It batches
    as `capabilities` says (the default backend's, unless a test asks for another)."""

    name = "fake"

    def __init__(
        self, spec: ModelSpec, *, delay: float = 0.0, capabilities: Capabilities = CPU_EXACT
    ) -> None:
        self.spec = spec
        self.delay = delay
        self.width = (
            (spec.hidden_size or 8) if spec.task is Task.EMBED else max(len(spec.labels), 1)
        )
        self.capabilities = dataclasses.replace(
            capabilities,
            output_width=self.width,
            token_outputs=capabilities.token_outputs and spec.task is Task.EMBED,
        )
        self.batches: list[tuple[int, int]] = []
        self.fail_next_shape: tuple[int, int] | None = None

    def run(self, batch: Batch) -> FloatArray:
        self.batches.append(batch.shape)
        if self.delay:
            time.sleep(self.delay)
        if (batch.input_ids == POISON).any():
            raise RuntimeError("secret internal detail: poisoned batch")
        rows = batch.input_ids.shape[0]
        out = np.zeros((rows, self.width), dtype=np.float32)
        lengths = batch.attention_mask.sum(axis=1)
        sums = (batch.input_ids * batch.attention_mask).sum(axis=1)
        for j in range(self.width):
            out[:, j] = np.sin(sums * (j + 1) * 0.001) + lengths * 0.01 * (j % 3)
        return out

    def run_tokens(self, batch: Batch) -> FloatArray:
        """Per token, a vector of its id and position (padding included, as a backend's)."""
        self.batches.append(batch.shape)
        if (batch.input_ids == POISON).any():
            raise RuntimeError("secret internal detail: poisoned batch")
        seq = batch.shape[1]
        j = np.arange(1, self.width + 1, dtype=np.float32)
        ids = batch.input_ids.astype(np.float32)[:, :, None]
        positions = np.arange(seq, dtype=np.float32)[None, :, None]
        return (np.sin(ids * j * 0.001) + positions * 0.01).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "dtype": "float32", "threads": 1}

    def close(self) -> None:
        pass


class FakeFactory:
    """A backend factory whose load can be held (to observe the loading stage) or fail."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail: str | None = None,
        capabilities: Capabilities = CPU_EXACT,
    ) -> None:
        self.delay = delay
        self.fail = fail
        self.capabilities = capabilities
        self.release = threading.Event()
        self.release.set()
        self.backends: list[FakeBackend] = []

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, spec: ModelSpec, settings: Settings) -> FakeBackend:
        self.release.wait(timeout=30)
        if self.fail:
            raise ModelError(self.fail)
        backend = FakeBackend(spec, delay=self.delay, capabilities=self.capabilities)
        self.backends.append(backend)
        return backend
