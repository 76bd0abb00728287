"""The CuPy backend: when `auto` picks it (everywhere), and on a CUDA machine with CuPy: parity
with sentence-transformers and transformers, graphs against eager forwards over every bucket
shape, the out-of-memory fallback of warm-up, and serving without importing torch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.backends import cupy_backend, loader
from ember.engine.tokenizer import Item
from ember.models import ModelSpec, Task, inspect_model
from ember.settings import Settings
from tests.corpus import PARITY_TEXTS
from tests.unit.backends import families
from tests.unit.backends.common import (
    PAIRS,
    SMALL_BUCKETS,
    batch_of,
    cosines,
    graphs_match_eager,
    warm_up_under_a_memory_cap,
)


def _cuda_with_cupy() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:
        return False


gpu = pytest.mark.skipif(not _cuda_with_cupy(), reason="needs CUDA and CuPy")


# --- everywhere: which backend `auto` picks on CUDA ---------------------------------------------


@pytest.fixture
def with_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend CuPy is installed (the rules read only its presence)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "cupy" else real(name, *a),
    )


def test_auto_picks_cupy_for_plain_bert_on_cuda(builtin: ModelSpec, with_cupy: None) -> None:
    assert cupy_backend.unsupported(builtin, Settings()) is None
    assert loader.resolve_backend(Settings(), "cuda", builtin) == "cupy"
    assert loader.resolve_backend(Settings(), "cpu", builtin) == "onnx"
    assert loader.resolve_backend(Settings(backend="torch"), "cuda", builtin) == "torch"


def test_auto_falls_back_to_torch_with_the_reason(
    builtin: ModelSpec, tmp_path: Path, with_cupy: None
) -> None:
    assert "float16" in str(cupy_backend.unsupported(builtin, Settings(dtype="bfloat16")))
    assert loader.resolve_backend(Settings(dtype="float32"), "cuda", builtin) == "torch"
    # Weights stored as bf16 (numpy cannot hold them): torch serves the model.
    folder = tmp_path / "bf16"
    shutil.copytree(builtin.path, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    spec = inspect_model(str(folder))
    assert "BF16" in str(cupy_backend.unsupported(spec, Settings()))
    assert loader.resolve_backend(Settings(), "cuda", spec) == "torch"


@pytest.mark.parametrize("family", families.FAMILIES)
@pytest.mark.parametrize("task", [Task.EMBED, Task.RERANK], ids=lambda t: t.value)
def test_auto_picks_cupy_for_every_bert_shaped_family(
    tiny_dir: Path, with_cupy: None, family: str, task: Task
) -> None:
    spec = inspect_model(str(families.build(tiny_dir / "bert-shaped", family, task)))
    assert loader.resolve_backend(Settings(), "cuda", spec) == "cupy"


def test_other_families_go_to_torch_on_cuda(
    tiny_dir: Path, tmp_path: Path, with_cupy: None
) -> None:
    source = families.build(tiny_dir / "bert-shaped", "bert", Task.EMBED)
    folder = tmp_path / "mpnet"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "mpnet"}))
    spec = inspect_model(str(folder))
    assert "not a BERT-shaped encoder" in str(cupy_backend.unsupported(spec, Settings()))
    assert loader.resolve_backend(Settings(), "cuda", spec) == "torch"


def test_dense_and_splade_models_go_to_torch_on_cuda(
    tiny_families: dict[str, Path], with_cupy: None
) -> None:
    # Both are BERT-shaped encoders, but the fast path has no Dense module or masked-LM head.
    dense = inspect_model(str(tiny_families["bert-dense"]))
    assert "Dense" in str(cupy_backend.unsupported(dense, Settings()))
    splade = inspect_model(str(tiny_families["splade"]))
    assert "splade" in str(cupy_backend.unsupported(splade, Settings()))
    for spec in (dense, splade):
        assert loader.resolve_backend(Settings(), "cuda", spec) == "torch"


def test_without_cupy_cuda_serves_through_torch(
    builtin: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real(name, *a)
    )
    assert cupy_backend.unsupported(builtin, Settings()) == "CuPy is not installed"
    assert loader.resolve_backend(Settings(), "cuda", builtin) == "torch"


def test_safetensors_dtypes_read_from_the_header(builtin: ModelSpec, tmp_path: Path) -> None:
    assert cupy_backend._safetensors_dtypes(builtin.path / "model.safetensors") <= {"F32", "I64"}
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 4)
    assert cupy_backend._safetensors_dtypes(tmp_path / "broken.safetensors") == {"unreadable"}


# --- CUDA + CuPy ----------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_fp16_matches_the_fp32_reference(
    builtin: ModelSpec, reference: np.ndarray, graphs: bool
) -> None:
    backend = cupy_backend.CupyBackend(spec=builtin, graphs=graphs)
    n = len(PARITY_TEXTS)
    batch = batch_of(builtin, list(PARITY_TEXTS), rows=32, seq=256)
    first = backend.run(batch)[:n]  # eager, then captured
    again = backend.run(batch)[:n]  # replayed (or eager again)
    assert cosines(first, reference).min() >= 0.999
    assert cosines(again, reference).min() >= 0.999
    assert np.isfinite(backend.run(batch)).all()  # padding rows too: zeros, never NaN
    assert backend.describe()["graph_shapes"] == (1 if graphs else 0)
    backend.close()


@pytest.mark.gpu
@gpu
def test_graphs_match_eager_over_every_shape(builtin: ModelSpec) -> None:
    """All shapes share one workspace: every replay must still equal an eager forward."""
    graphs = cupy_backend.CupyBackend(spec=builtin)
    eager = cupy_backend.CupyBackend(spec=builtin, graphs=False)
    # Texts of at most 16 tokens, so that each batch has exactly its bucket's shape.
    texts = [f"sentence {i} of the graph check, {'with more words ' * (i % 3)}" for i in range(32)]
    graphs_match_eager(builtin, graphs, eager, texts)
    assert graphs.describe()["graph_shapes"] == len(SMALL_BUCKETS.shapes())
    graphs.close()
    eager.close()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", ["reranker", "classifier"])
def test_heads_match_transformers(tiny: dict[str, Path], kind: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = inspect_model(str(tiny[kind]))
    assert spec.task in (Task.RERANK, Task.CLASSIFY)
    items = list(PAIRS) if spec.task is Task.RERANK else [a for a, _ in PAIRS]
    backend = cupy_backend.CupyBackend(spec=spec)
    logits = backend.run(batch_of(spec, items))[: len(items)]
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny[kind])).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny[kind]))
    args = ([a for a, _ in items], [b for _, b in items]) if spec.task is Task.RERANK else (items,)
    with torch.no_grad():
        expected = model(**tok(*args, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=2e-2)
    backend.close()


FAMILY_CASES = [
    *((f, Task.EMBED, "mean") for f in families.FAMILIES),
    ("xlm-roberta", Task.EMBED, "cls"),
    *((f, Task.RERANK, "mean") for f in families.FAMILIES),
    ("roberta", Task.CLASSIFY, "mean"),
    ("distilbert", Task.CLASSIFY, "mean"),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("family", "task", "pooling"), FAMILY_CASES, ids=lambda v: str(getattr(v, "value", v))
)
def test_families_in_fp16_match_transformers(
    tiny_dir: Path, family: str, task: Task, pooling: str
) -> None:
    """Each BERT-shaped family and head on the fast path against transformers in fp32: cos ≥
    0.999 for vectors, logits within fp16's error (2e-2)."""
    path = families.build(tiny_dir / "bert-shaped", family, task, pooling=pooling)
    spec = inspect_model(str(path))
    backend = cupy_backend.CupyBackend(spec=spec)
    assert backend.describe()["implementation"] == f"native-{family}"
    items: list[Item]
    if task is Task.EMBED:
        items = [*PARITY_TEXTS[:6], "a longer text " * 20]
    else:
        items = list(PAIRS) if task is Task.RERANK else [a for a, _ in PAIRS]
    batch = batch_of(spec, items, rows=len(items) + 2, seq=64)
    first = backend.run(batch)[: len(items)]  # eager, then captured
    again = backend.run(batch)[: len(items)]  # replayed
    expected = families.reference(path, family, task, batch, pooling=pooling)[: len(items)]
    np.testing.assert_allclose(again, first, rtol=1e-3, atol=1e-3)
    if task is Task.EMBED:
        assert cosines(again, expected).min() >= 0.999
    else:
        np.testing.assert_allclose(again, expected, atol=2e-2)
        # Closeness means something only if the inputs' scores differ by more than the bound
        # (within it, the order of close scores may differ: fp16).
        assert np.ptp(expected[:, 0]) > 0.05
    backend.close()


@pytest.mark.gpu
@gpu
def test_warm_up_lowers_max_batch_tokens_on_oom(builtin: ModelSpec) -> None:
    import cupy

    pool = cupy.get_default_memory_pool()

    def factory(spec: ModelSpec, settings: Settings) -> cupy_backend.CupyBackend:
        backend = cupy_backend.CupyBackend(spec=spec)
        # Room for the weights and 80 MiB: the workspace of 16384 tokens (~6 KB a token with
        # the fused attention: ~100 MB) does not fit, that of 8192 does.
        pool.set_limit(size=pool.used_bytes() + 80 * 2**20)
        return backend

    try:
        stage, tokens = warm_up_under_a_memory_cap(factory)
    finally:
        pool.set_limit(size=0)
        pool.free_all_blocks()
    assert stage == "ready"
    assert 1024 <= tokens < 16384  # the backend's default budget


@pytest.mark.gpu
@gpu
def test_serving_on_cuda_imports_no_torch(builtin: ModelSpec) -> None:
    code = (
        "import sys, numpy as np\n"
        "from ember.backends.loader import create_backend\n"
        "from ember.models import inspect_model\n"
        "from ember.settings import Settings\n"
        "from ember.backends.base import Batch\n"
        "backend = create_backend(inspect_model('builtin'), Settings())\n"
        "ids = np.array([[101, 7592, 102]], dtype=np.int64)\n"
        "out = backend.run(Batch(input_ids=ids, attention_mask=np.ones_like(ids),\n"
        "                        token_type_ids=np.zeros_like(ids), real_rows=1))\n"
        "print(backend.name, out.shape, sorted(m for m in sys.modules\n"
        "      if m.split('.')[0] in ('torch', 'transformers', 'sentence_transformers')))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert found.stdout.split()[0] == "cupy"
    assert found.stdout.strip().endswith("[]"), found.stdout


def test_prepare_for_cuda_says_what_serves_the_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without CuPy, `ember prepare --device cuda` has nothing to compile: torch serves it."""
    from ember.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real(name, *a)
    )
    assert main(["prepare", "--device", "cuda", "--cache-dir", str(tmp_path)]) == 0
    assert "served by torch on CUDA: nothing to prepare" in capsys.readouterr().out


@pytest.mark.gpu
@gpu
def test_prepare_compiles_the_kernels_into_the_cache(tmp_path: Path) -> None:
    # A fresh process: CuPy also memoises compiled modules in memory.
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember",
            "prepare",
            "--device",
            "cuda",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "CUPY_CACHE_DIR"},
    )
    assert found.returncode == 0, found.stderr
    cached = list((tmp_path / "cuda-kernels").iterdir())
    assert found.stdout.strip() == str(tmp_path / "cuda-kernels") and cached


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_per_token_outputs_match_transformers(tiny_dir: Path, family: str) -> None:
    """/embed_all on the fast path: each real token's fp16 last hidden state (read from the
    workspace after the shape's graph) against transformers' fp32 one, cos ≥ 0.999."""
    import torch
    from transformers import AutoModel

    path = families.build(tiny_dir / "bert-shaped", family, Task.EMBED)
    spec = inspect_model(str(path))
    backend = cupy_backend.CupyBackend(spec=spec)
    assert backend.capabilities.token_outputs
    items: list[Item] = [*PARITY_TEXTS[:6], "a longer text " * 20]
    batch = batch_of(spec, items, rows=len(items) + 2, seq=64)
    backend.run(batch)  # eager, then captured: run_tokens replays the graph
    hidden = backend.run_tokens(batch)
    assert hidden.shape == (*batch.shape, spec.hidden_size)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    inputs = {
        "input_ids": torch.from_numpy(batch.input_ids),
        "attention_mask": torch.from_numpy(batch.attention_mask),
    }
    if family == "bert":
        inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids)
    with torch.inference_mode():
        expected = model(**inputs).last_hidden_state.numpy()
    real = batch.attention_mask[: len(items)].astype(bool)
    assert cosines(hidden[: len(items)][real], expected[: len(items)][real]).min() >= 0.999
    backend.close()
