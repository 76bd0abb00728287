"""The torch backend: ember's own BERT encoder and the transformers path against the references,
pooling, padding, the fallback rules, and (with CUDA only) graphs, fp16 parity and the
out-of-memory fallback of warm-up."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends import bert
from ember.backends.base import Batch
from ember.backends.torch_backend import TorchBackend, pool
from ember.engine.tokenizer import Item, TextTokenizer
from ember.models import ModelSpec, Task, inspect_model
from tests import tiny_models
from tests.corpus import PARITY_TEXTS

torch = pytest.importorskip("torch")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PAIRS = [
    ("what is ember?", "an embedding server that is warm before it is ready"),
    ("what is ember?", "the glowing remains of a fire"),
    ("capital of france", "Paris is the capital of France."),
]


def batch_of(spec: ModelSpec, items: list[Item], *, rows: int | None = None, seq: int = 0) -> Batch:
    """Tokenise and right-pad like the batcher: padding rows attend to their first token."""
    tokenizer = TextTokenizer(path=spec.tokenizer_file, max_length=spec.max_length)
    encoded = tokenizer.encode(items)
    rows = rows or len(encoded) + 1
    seq = max(seq, *(e.length for e in encoded))
    ids = np.full((rows, seq), tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    types = np.zeros((rows, seq), dtype=np.int64)
    for row, enc in enumerate(encoded):
        ids[row, : enc.length] = enc.ids
        mask[row, : enc.length] = 1
        types[row, : enc.length] = enc.type_ids
    mask[len(encoded) :, 0] = 1
    return Batch(input_ids=ids, attention_mask=mask, token_type_ids=types, real_rows=len(encoded))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out: np.ndarray = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return out


@pytest.fixture(scope="module")
def builtin() -> ModelSpec:
    return inspect_model("builtin")


@pytest.fixture(scope="module")
def reference(builtin: ModelSpec) -> np.ndarray:
    """sentence-transformers' own fp32 vectors for the parity corpus (unnormalised)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(builtin.path), device="cpu", local_files_only=True)
    vectors: np.ndarray = model.encode(
        PARITY_TEXTS, normalize_embeddings=False, convert_to_numpy=True
    )
    return vectors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch-backend")
    return {
        "reranker": tiny_models.build_reranker(root / "reranker"),
        "classifier": tiny_models.build_classifier(root / "classifier"),
        "embedder": tiny_models.build_embedder(root / "embedder"),
    }


# --- CPU: parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False], ids=["native", "transformers"])
def test_builtin_matches_sentence_transformers(
    builtin: ModelSpec, reference: np.ndarray, native: bool
) -> None:
    backend = TorchBackend(spec=builtin, device="cpu", threads=1, native=native)
    assert backend.implementation == ("native-bert" if native else "transformers")
    n = len(PARITY_TEXTS)
    out = backend.run(batch_of(builtin, list(PARITY_TEXTS), rows=n + 3))
    assert out.shape == (n + 3, 384) and out.dtype == np.float32
    assert cosines(out[:n], reference).min() >= 0.9999


def test_padding_rows_and_length_do_not_change_vectors(builtin: ModelSpec) -> None:
    backend = TorchBackend(spec=builtin, device="cpu", threads=1)
    texts = ["hello", "A man is eating food.", "the quick brown fox " * 10]
    tight = backend.run(batch_of(builtin, texts, rows=3))
    loose = backend.run(batch_of(builtin, texts, rows=8, seq=128))[:3]
    np.testing.assert_allclose(loose, tight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["reranker", "classifier"])
def test_native_head_matches_transformers(tiny: dict[str, Path], kind: str) -> None:
    spec = inspect_model(str(tiny[kind]))
    assert spec.task in (Task.RERANK, Task.CLASSIFY)
    native = TorchBackend(spec=spec, device="cpu", threads=1)
    assert native.implementation == "native-bert"
    firsts = [q for q, _ in PAIRS]
    seconds = [d for _, d in PAIRS]
    items: list[Item] = list(PAIRS)
    out = native.run(batch_of(spec, items))[: len(PAIRS)]
    ref = tiny_models.reference_logits(tiny[kind], firsts, seconds, max_length=spec.max_length)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_tiny_embedder_native_matches_transformers(tiny: dict[str, Path]) -> None:
    spec = inspect_model(str(tiny["embedder"]))
    texts = ["short", "a somewhat longer sentence about embeddings", "déjà vu"]
    a = TorchBackend(spec=spec, device="cpu", threads=1).run(batch_of(spec, texts))
    b = TorchBackend(spec=spec, device="cpu", threads=1, native=False).run(batch_of(spec, texts))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- CPU: what runs natively ------------------------------------------------------------------


def _copy_with_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    "changes",
    [
        {"model_type": "roberta"},
        {"position_embedding_type": "relative_key"},
        {"hidden_act": "silu"},
    ],
)
def test_unsupported_configs_fall_back_to_transformers(
    tiny: dict[str, Path], tmp_path: Path, changes: dict[str, Any]
) -> None:
    path = _copy_with_config(tiny["embedder"], tmp_path / "m", **changes)
    spec = inspect_model(str(path))
    assert bert.supported(spec) is None


def test_native_off_uses_transformers(tiny: dict[str, Path]) -> None:
    spec = inspect_model(str(tiny["embedder"]))
    backend = TorchBackend(spec=spec, device="cpu", threads=1, native=False)
    info = backend.describe()
    assert info["implementation"] == "transformers"
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["threads"] == 1
    assert backend.shape_report() == []
    backend.close()


# --- CPU: pooling -----------------------------------------------------------------------------


def test_pooling_modes_use_real_tokens_only() -> None:
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls").numpy(), hidden[:, 0].numpy())
    np.testing.assert_allclose(pool(hidden, mask, "mean").numpy(), [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool(hidden, mask, "max").numpy(), [[2.0, 3.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool(hidden, mask, "lasttoken").numpy(), [[2.0, 3.0], [6.0, 7.0]])


# --- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_low_precision_matches_fp32_reference(
    builtin: ModelSpec, reference: np.ndarray, dtype: str
) -> None:
    backend = TorchBackend(spec=builtin, device="cuda", dtype=dtype)
    n = len(PARITY_TEXTS)
    batch = batch_of(builtin, list(PARITY_TEXTS), rows=32, seq=256)
    first = backend.run(batch)[:n]  # eager, then captured
    again = backend.run(batch)[:n]  # replayed
    assert cosines(first, reference).min() >= 0.999
    assert cosines(again, reference).min() >= 0.999
    assert backend.describe()["graph_shapes"] + backend.describe()["eager_shapes"] == 1
    backend.close()


@pytest.mark.gpu
@cuda
def test_cuda_graphs_share_one_pool_safely(builtin: ModelSpec) -> None:
    """Capture every shape into the shared pool, then check replays against eager forwards."""
    from ember.engine.buckets import Buckets

    buckets = Buckets.build(
        max_length=256,
        seq_buckets=[16, 64, 256],
        row_buckets=[],
        max_tokens=4096,
        max_rows=32,
        gpu=True,
    )
    graphs = TorchBackend(spec=builtin, device="cuda")
    eager = TorchBackend(spec=builtin, device="cuda", cuda_graphs=False)
    texts = [PARITY_TEXTS[i % len(PARITY_TEXTS)] for i in range(32)]
    for rows, seq in buckets.shapes():
        graphs.run(batch_of(builtin, texts[:rows], rows=rows, seq=seq))
    assert graphs.describe()["graph_shapes"] > 0
    for rows, seq in reversed(buckets.shapes()):
        batch = batch_of(builtin, texts[:rows][::-1], rows=rows, seq=seq)
        assert cosines(graphs.run(batch), eager.run(batch)).min() >= 0.9999
    graphs.close()
    eager.close()


@pytest.mark.gpu
@cuda
def test_warm_up_lowers_max_batch_tokens_on_cuda_oom(builtin: ModelSpec) -> None:
    from ember.engine.registry import Engines
    from ember.settings import Settings

    total = torch.cuda.get_device_properties(0).total_memory

    def factory(spec: ModelSpec, settings: Settings) -> TorchBackend:
        backend = TorchBackend(spec=spec, device="cuda", dtype="float16")
        # Room for the weights and about 250 MiB: 32768 tokens per batch do not fit.
        allowed = torch.cuda.memory_allocated() + 250 * 2**20
        torch.cuda.set_per_process_memory_fraction(allowed / total)
        return backend

    async def go() -> tuple[str, int]:
        engines = Engines(Settings(model=["builtin"]), backend_factory=factory, gpu=True)
        await engines.start()
        model = engines.models[0]
        stage, tokens = engines.stage.value, model.describe()["buckets"]["max_batch_tokens"]
        await engines.stop()
        return stage, tokens

    try:
        stage, tokens = asyncio.run(go())
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert stage == "ready"
    assert 1024 <= tokens < 32768
