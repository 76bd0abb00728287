"""`ember prepare` artifacts served as they are: `/info` describes the model as its source folder
does (family, pooling, Dense modules, backend, attention, fusion), since the manifest holds the
whole model spec; and they answer as the source folder served by torch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.backends.artifact import prepare_main
from ember.bench.tiny_families import FAMILIES
from ember.settings import Settings
from tests.conftest import running_app

pytestmark = pytest.mark.anyio

TEXTS = ["hello", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def prepared(
    tiny_families: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The Dense and the SPLADE model, each prepared with the default settings."""
    root = tmp_path_factory.mktemp("prepared")
    settings = Settings(cache_dir=root / "cache")
    out: dict[str, Path] = {}
    for name in ("bert-dense", "splade"):
        out[name] = root / name
        source = str(tiny_families[name])
        code = prepare_main(settings, source=source, out=str(out[name]), optimize=None, force=False)
        assert code == 0
    return out


async def _served(path: Path, backend: str) -> tuple[dict[str, object], np.ndarray]:
    async with running_app(None, model=[str(path)], backend=backend, threads=1) as (_app, client):
        info = (await client.get("/info")).json()["models"][0]
        r = await client.post("/embed", json={"inputs": TEXTS, "normalize": False})
        assert r.status_code == 200, r.text
        return info, np.array(r.json())


async def test_info_of_a_prepared_dense_model_names_its_dense_modules(
    prepared: dict[str, Path], tiny_families: dict[str, Path]
) -> None:
    info, got = await _served(prepared["bert-dense"], "onnx")
    source_info, expected = await _served(tiny_families["bert-dense"], "torch")
    width = FAMILIES["bert-dense"].dense
    (dense,) = info["dense"]  # type: ignore[misc]
    assert (dense["folder"], dense["out_features"]) == ("2_Dense", width)
    assert info["dense"] == source_info["dense"]
    assert (info["family"], info["pooling"], info["dimension"]) == ("bert", "cls", width)
    assert (info["backend"], source_info["backend"]) == ("onnx", "torch")
    assert info["optimization"]["fused"]  # type: ignore[index]
    assert info["attention"] == "fused Attention"
    assert source_info["attention"] in ("sdpa", "eager")
    assert got.shape == (len(TEXTS), width)
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.9999


async def test_info_of_a_prepared_splade_model(prepared: dict[str, Path]) -> None:
    info, got = await _served(prepared["splade"], "onnx")
    assert (info["family"], info["pooling"], info["dense"]) == ("bert", "splade-max", None)
    assert info["dimension"] == got.shape[1]
    assert info["backend"] == "onnx"
    assert "fused" in info["optimization"]  # type: ignore[operator]
    assert info["attention"] in ("fused Attention", "MatMul+Softmax")
