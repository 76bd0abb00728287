"""SPLADE and Dense models through the whole app on torch: TEI's `/embed_sparse`, `/embed` and
`POST /` answers against sentence-transformers' `SparseEncoder`, and what `/info` says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.bench.tiny_families import FAMILIES, FAMILY_MAX_LENGTH, reference_sparse
from tests.conftest import running_app

pytestmark = pytest.mark.anyio

TEXTS = ["hello", "The quick brown fox jumps over the lazy dog.", "naïve café, Zürich 2026!"]


async def test_splade_routes_answer_as_tei(tiny_families: dict[str, Path]) -> None:
    path = tiny_families["splade"]
    expected = reference_sparse(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
    async with running_app(None, model=[str(path)], backend="torch", device="cpu", threads=1) as (
        _app,
        client,
    ):
        for route in ("/embed_sparse", "/"):
            r = await client.post(route, json={"inputs": TEXTS})
            assert r.status_code == 200, (route, r.text)
            got = np.zeros_like(expected)
            for i, row in enumerate(r.json()):
                indices = [item["index"] for item in row]
                assert indices == sorted(indices) and all(item["value"] for item in row)
                got[i, indices] = [item["value"] for item in row]
            assert np.abs(got - expected).max() <= 1e-4, route
        # TEI: a SPLADE vector is never normalised; without normalisation, the dense vector.
        refused = await client.post("/embed", json={"inputs": TEXTS})
        assert refused.status_code == 424 and "normalize" in refused.json()["error"]
        dense = await client.post("/embed", json={"inputs": TEXTS, "normalize": False})
        assert np.abs(np.array(dense.json()) - expected).max() <= 1e-4
        info = (await client.get("/info")).json()["models"][0]
        assert (info["pooling"], info["dimension"]) == ("splade-max", expected.shape[1])
        assert info["dense"] is None


async def test_info_names_the_dense_modules(tiny_families: dict[str, Path]) -> None:
    async with running_app(
        None, model=[str(tiny_families["bert-dense"])], backend="torch", device="cpu", threads=1
    ) as (_app, client):
        info = (await client.get("/info")).json()["models"][0]
        (dense,) = info["dense"]
        width = FAMILIES["bert-dense"].dense
        assert (dense["folder"], dense["out_features"], dense["activation"]) == (
            "2_Dense",
            width,
            "Tanh",
        )
        assert info["dimension"] == width
        r = await client.post("/embed", json={"inputs": ["a", "b"]})
        assert np.array(r.json()).shape == (2, width)
