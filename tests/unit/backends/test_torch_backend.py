"""The torch backend: ember's own BERT encoder and the transformers path against the references,
pooling, padding, the fallback rules, and (with CUDA only) graphs, fp16 parity and the
out-of-memory fallback of warm-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends import bert
from ember.backends.torch_backend import TorchBackend, pool
from ember.bench import tiny_models
from ember.engine.tokenizer import Item
from ember.models import ModelSpec, Task, inspect_model
from tests.corpus import PARITY_TEXTS
from tests.unit.backends.common import PAIRS, batch_of, cosines

torch = pytest.importorskip("torch")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


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
        {"model_type": "mpnet"},  # RoBERTa, XLM-R and DistilBERT run natively too
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
    from tests.unit.backends.common import graphs_match_eager

    graphs = TorchBackend(spec=builtin, device="cuda")
    eager = TorchBackend(spec=builtin, device="cuda", cuda_graphs=False)
    graphs_match_eager(
        builtin, graphs, eager, [PARITY_TEXTS[i % len(PARITY_TEXTS)] for i in range(32)]
    )
    assert graphs.describe()["graph_shapes"] > 0
    graphs.close()
    eager.close()


@pytest.mark.gpu
@cuda
def test_warm_up_lowers_max_batch_tokens_on_cuda_oom(builtin: ModelSpec) -> None:
    from tests.unit.backends.common import warm_up_under_a_memory_cap

    total = torch.cuda.get_device_properties(0).total_memory

    def factory(spec: ModelSpec, settings: object) -> TorchBackend:
        backend = TorchBackend(spec=spec, device="cuda", dtype="float16")
        # Room for the weights and about 250 MiB: 32768 tokens per batch do not fit.
        allowed = torch.cuda.memory_allocated() + 250 * 2**20
        torch.cuda.set_per_process_memory_fraction(allowed / total)
        return backend

    try:
        stage, tokens = warm_up_under_a_memory_cap(factory)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert stage == "ready"
    assert 1024 <= tokens < 32768
