"""The ONNX backend against references: sentence-transformers for the built-in model,
transformers for tiny rerank/classify models and every pooling mode."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends.base import Batch
from ember.backends.onnx_backend import OnnxBackend
from ember.engine.tokenizer import Item, TextTokenizer
from ember.models import ModelSpec, Task, builtin_path, inspect_model
from ember.settings import Settings
from tests.corpus import PARITY_TEXTS

PAIRS: list[Item] = [
    ("what is a fast embedding server?", "ember is warm before it says it is ready."),
    ("what is a fast embedding server?", "The cat sat on the mat."),
    ("short", PARITY_TEXTS[15]),  # truncated at the model's max length
]


def batch_of(spec: ModelSpec, items: Sequence[Item], *, pad_rows: int = 1) -> Batch:
    """Tokenise and right-pad like the batcher, with `pad_rows` padding rows at the end."""
    tokenizer = TextTokenizer(path=spec.tokenizer_file, max_length=spec.max_length)
    encoded = tokenizer.encode(list(items))
    rows, seq = len(encoded) + pad_rows, max(e.length for e in encoded)
    ids = np.full((rows, seq), tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    types = np.zeros((rows, seq), dtype=np.int64)
    for row, enc in enumerate(encoded):
        ids[row, : enc.length] = enc.ids
        mask[row, : enc.length] = 1
        types[row, : enc.length] = enc.type_ids
    mask[len(encoded) :, 0] = 1  # as the batcher does: padding rows attend to one token
    return Batch(input_ids=ids, attention_mask=mask, token_type_ids=types, real_rows=len(encoded))


def cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    result: np.ndarray[Any, Any] = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return result


def run_real(backend: OnnxBackend, batch: Batch) -> np.ndarray[Any, Any]:
    out = backend.run(batch)
    assert out.dtype == np.float32
    assert out.shape[0] == batch.shape[0]
    return out[: batch.real_rows]


def test_parity_with_sentence_transformers(builtin_artifact: Path, settings: Settings) -> None:
    from sentence_transformers import SentenceTransformer

    spec = inspect_model(str(builtin_artifact))
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    # Batches of mixed lengths, so padding inside a batch is exercised too.
    got = np.concatenate(
        [run_real(backend, batch_of(spec, PARITY_TEXTS[i : i + 6])) for i in range(0, 18, 6)]
    )
    reference = SentenceTransformer(str(builtin_path()), device="cpu").encode(
        PARITY_TEXTS, convert_to_numpy=True
    )
    assert got.shape == (len(PARITY_TEXTS), 384)
    assert cosines(got, reference).min() >= 0.9999
    # The graph returns unnormalised embeddings: normalising is the engine's business.
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


def test_the_prepared_graph_is_fused_without_skip_layer_norm(builtin_artifact: Path) -> None:
    """ORT's SkipLayerNormalization is ~3x slower on CPU than Add + LayerNormalization
    (onnx_notes.md): the artifact keeps the latter, and its weights in the external data file."""
    import onnx

    from ember.backends.artifact import MODEL_FILE

    graph = onnx.load(str(builtin_artifact / MODEL_FILE), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert {"Attention", "EmbedLayerNormalization", "BiasGelu", "LayerNormalization"} <= ops
    assert "SkipLayerNormalization" not in ops
    big = [t for t in graph.initializer if int(np.prod(t.dims)) * 4 >= 4096]
    assert big
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)


def _hidden_states(path: Path, batch: Batch) -> np.ndarray[Any, Any]:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
        )
    hidden: np.ndarray[Any, Any] = out.last_hidden_state.numpy()
    return hidden


def _pool(hidden: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], method: str) -> Any:
    """An independent numpy statement of sentence-transformers' pooling modes."""
    m = mask[:, :, None].astype(bool)
    if method == "cls":
        return hidden[:, 0]
    if method == "max":
        return np.where(m, hidden, -np.inf).max(axis=1)
    if method == "lasttoken":
        return hidden[np.arange(len(hidden)), mask.sum(axis=1) - 1]
    return (hidden * m).sum(axis=1) / m.sum(axis=1)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
def test_pooling_in_the_graph(pooling: str, tiny_plain: Path, settings: Settings) -> None:
    spec = inspect_model(str(tiny_plain), pooling=pooling)
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    batch = batch_of(spec, PARITY_TEXTS[:7], pad_rows=2)
    expected = _pool(_hidden_states(tiny_plain, batch), batch.attention_mask, pooling)
    got = backend.run(batch)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def _logits(path: Path, batch: Batch) -> np.ndarray[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), local_files_only=True
    ).eval()
    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
        )
    logits: np.ndarray[Any, Any] = out.logits.numpy()
    return logits


def test_rerank_logits(tiny_reranker: Path, settings: Settings) -> None:
    spec = inspect_model(str(tiny_reranker))
    assert spec.task is Task.RERANK
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    batch = batch_of(spec, PAIRS)
    assert batch.token_type_ids.any(), "pairs must carry segment ids"
    got = run_real(backend, batch)
    assert got.shape == (len(PAIRS), 1)
    np.testing.assert_allclose(got, _logits(tiny_reranker, batch)[: len(PAIRS)], atol=1e-4)


def test_classify_logits(tiny_classifier: Path, settings: Settings) -> None:
    spec = inspect_model(str(tiny_classifier))
    assert spec.task is Task.CLASSIFY
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    batch = batch_of(spec, PARITY_TEXTS[:5])
    got = run_real(backend, batch)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, _logits(tiny_classifier, batch)[:5], atol=1e-4)


def test_describe_and_close(tiny_artifact: Path, settings: Settings) -> None:
    spec = inspect_model(str(tiny_artifact))
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    info = backend.describe()
    assert info["backend"] == "onnx"
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert info["quantize"] == "none"
    assert info["threads"] == 1
    assert info["artifact"] == str(tiny_artifact)
    assert info["session"]["inter_op_threads"] == 1
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(batch_of(spec, ["hello"]))


_SERVING_SCRIPT = """
import json, sys
import numpy as np
from ember.backends.base import Batch
from ember.backends.onnx_backend import OnnxBackend
from ember.models import inspect_model
from ember.settings import Settings

settings = Settings(cache_dir=sys.argv[2], threads=1)
ids = np.full((2, 8), 2000, dtype=np.int64)
batch = Batch(input_ids=ids, attention_mask=np.ones_like(ids),
              token_type_ids=np.zeros_like(ids), real_rows=2)
# An artifact folder served directly, then the built-in model found in the cache.
for source in (sys.argv[1], "builtin"):
    backend = OnnxBackend.for_model(spec=inspect_model(source), settings=settings, device="cpu")
    assert backend.run(batch).shape == (2, 384)
heavy = {"torch", "transformers", "sentence_transformers", "onnx"}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def test_serving_never_imports_torch(builtin_artifact: Path, cache_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SERVING_SCRIPT), str(builtin_artifact), cache_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
