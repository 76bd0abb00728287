"""`/info`'s per-model record names the family, architecture, pooling and Dense modules from the
model's spec, whatever the backend describes of itself (the CuPy backend, say, names none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends.base import Batch, Capabilities, FloatArray, output_width
from ember.engine.registry import Engines
from ember.models import ModelSpec
from ember.settings import Settings


class QuietBackend:
    """Describes itself as the CuPy backend does: backend, device, implementation."""

    name = "quiet"

    def __init__(self, spec: ModelSpec) -> None:
        self.width = output_width(spec)
        self.capabilities = Capabilities(device="cpu", lengths="exact", output_width=self.width)

    def run(self, batch: Batch) -> FloatArray:
        return np.ones((batch.shape[0], self.width), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "implementation": "native-bert"}

    def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_describe_names_the_model_from_its_spec(tiny_families: dict[str, Path]) -> None:
    settings = Settings(model=[str(tiny_families["bert-dense"])])
    engines = Engines(settings, backend_factory=lambda spec, _settings: QuietBackend(spec))
    await engines.start()
    try:
        info = engines.models[0].describe()
    finally:
        await engines.stop()
    assert (info["family"], info["architecture"]) == ("bert", "BertModel")
    assert (info["backend"], info["pooling"]) == ("quiet", "cls")
    (dense,) = info["dense"]
    assert dense["folder"] == "2_Dense"
    assert info["dimension"] == dense["out_features"]
