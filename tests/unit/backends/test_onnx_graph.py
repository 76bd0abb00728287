"""The torch-free ONNX graph (`onnx_graph.py`) of the BERT-shaped families, fused and unfused,
against transformers; its fused operators against the torch export's; and `ember prepare` of a
covered model importing neither torch nor transformers."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ember.backends import onnx_graph
from ember.backends.base import Batch
from ember.backends.graph_passes import fuse
from ember.bench import tiny_models
from ember.manifest import OPSET
from ember.models import ModelSpec, Task, inspect_model
from tests.unit.backends import families
from tests.unit.backends.common import batch_of, cosines
from tests.unit.backends.test_bert import items_for

pytest.importorskip("torch")

CASES = [
    *((f, Task.EMBED, "mean") for f in families.FAMILIES),
    ("bert", Task.EMBED, "cls"),
    ("bert", Task.EMBED, "lasttoken"),
    ("xlm-roberta", Task.EMBED, "cls"),
    *((f, Task.RERANK, "mean") for f in families.FAMILIES),
    ("bert", Task.CLASSIFY, "mean"),
    ("roberta", Task.CLASSIFY, "mean"),
    ("distilbert", Task.CLASSIFY, "mean"),
]
COUNTED_OPS = (
    "MatMul",
    "Attention",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
)
"""The fused operators, and MatMul: the heavy work left outside them."""


def write(spec: ModelSpec, folder: Path) -> tuple[Path, Path, Path]:
    """In `folder`: the graph of `spec`, its copy fused by ORT's optimizer, and the graph written
    fused (what `ember prepare` uses); the two fused ones must have the same operators."""
    config = onnx_graph.covers(spec)
    assert config is not None
    for name in ("plain", "fused", "direct"):
        (folder / name).mkdir(parents=True)
    plain, fused, direct = (folder / n / "model.onnx" for n in ("plain", "fused", "direct"))
    onnx_graph.build_graph(spec, config, path=plain, opset=OPSET)
    assert fuse(spec, plain, fused).fused
    onnx_graph.build_graph(spec, config, path=direct, opset=OPSET, fused=True)
    # Not every op: without token types ORT feeds EmbedLayerNormalization position ids sliced
    # from a constant (5 small nodes); the graph written fused leaves them to the default.
    assert op_counts(direct) == op_counts(fused)
    return plain, fused, direct


def run(graph: Path, batch: Batch) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "token_type_ids": batch.token_type_ids,
    }
    out: np.ndarray = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    return out


def op_counts(graph: Path) -> dict[str, int]:
    """How many of each of COUNTED_OPS the graph holds; Gemm counts as MatMul (torch exports a
    Linear on 2-D input, the heads', as Gemm)."""
    import onnx

    ops = (n.op_type for n in onnx.load(str(graph)).graph.node)
    counts = collections.Counter("MatMul" if op == "Gemm" else op for op in ops)
    return {op: counts[op] for op in COUNTED_OPS if counts[op]}


@pytest.mark.parametrize(
    ("family", "task", "pooling"), CASES, ids=lambda v: str(getattr(v, "value", v))
)
def test_graph_matches_transformers(
    tiny_dir: Path, tmp_path: Path, family: str, task: Task, pooling: str
) -> None:
    path = families.build(tiny_dir / "bert-shaped", family, task, pooling=pooling)
    spec = inspect_model(str(path))
    assert spec.task is task and spec.pooling == pooling
    items = items_for(task)
    # Padding rows and padded length, as the batcher sends them.
    batch = batch_of(spec, items, rows=len(items) + 2, seq=64)
    expected = families.reference(path, family, task, batch, pooling=pooling)[: len(items)]
    plain, fused, direct = write(spec, tmp_path)
    for graph in (plain, fused, direct):
        out = run(graph, batch)[: len(items)]
        if task is Task.EMBED:
            assert cosines(out, expected).min() >= 0.9999, graph
        else:
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, err_msg=str(graph))
            assert np.ptp(expected[:, 0]) > 0.05  # scores that differ: the check means something
    fused_ops = op_counts(fused)
    layers = 2
    assert fused_ops["Attention"] == layers and fused_ops["EmbedLayerNormalization"] == 1
    assert "SkipLayerNormalization" not in fused_ops  # left out on purpose (graph_passes.fuse)


def test_tanh_gelu_fuses_to_fast_gelu(tiny_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    path = tiny_dir / "bert-shaped" / "gelu-tanh"
    if not path.is_dir():
        BertModel(tiny_models.tiny_config(hidden_act="gelu_pytorch_tanh")).save_pretrained(path)
        tiny_models.copy_tokenizer(path)
        families.sentence_transformers_files(path, "mean")
    spec = inspect_model(str(path))
    texts = [str(t) for t in items_for(Task.EMBED)]
    expected = SentenceTransformer(str(path), device="cpu", local_files_only=True).encode(texts)
    batch = batch_of(spec, list(texts))
    plain, fused, direct = write(spec, tmp_path)
    for graph in (plain, fused, direct):
        assert cosines(run(graph, batch)[: len(texts)], expected).min() >= 0.9999
    assert op_counts(direct)["FastGelu"] == 2


@pytest.mark.parametrize(
    ("family", "task"),
    [("bert", Task.EMBED), ("roberta", Task.EMBED), ("distilbert", Task.RERANK)],
    ids=lambda v: str(getattr(v, "value", v)),
)
def test_fused_ops_as_the_torch_export(
    tiny_dir: Path, tmp_path: Path, family: str, task: Task
) -> None:
    """The same fused operators as the torch export, or more: ORT does not fuse RoBERTa's
    cumsum positions into EmbedLayerNormalization; this graph has BERT's positions, so it does."""
    from ember.backends import export

    path = families.build(tiny_dir / "bert-shaped", family, task)
    spec = inspect_model(str(path))
    _, _, mine = write(spec, tmp_path / "mine")
    module, names = export._load_wrapper(spec)
    (tmp_path / "torch").mkdir()
    exported = tmp_path / "torch" / "model.onnx"
    feeds = export._sample_feeds(spec, names)
    outputs = export._output_names(spec)
    export._export(module, feeds=feeds, names=names, outputs=outputs, path=exported, opset=OPSET)
    (tmp_path / "torch-fused").mkdir()
    assert fuse(spec, exported, tmp_path / "torch-fused" / "model.onnx").fused
    theirs = op_counts(tmp_path / "torch-fused" / "model.onnx")
    ours = op_counts(mine)
    # The embedding LayerNormalization becomes the EmbedLayerNormalization where it fuses.
    extra = ours.pop("EmbedLayerNormalization", 0) - theirs.pop("EmbedLayerNormalization", 0)
    theirs["LayerNormalization"] -= extra
    assert ours == theirs and extra == (1 if family == "roberta" else 0)


def test_uncovered_models_fall_back_to_the_torch_export(tiny_dir: Path) -> None:
    path = families.build(tiny_dir / "bert-shaped", "bert", Task.EMBED, pooling="mean")
    spec = inspect_model(str(path))
    assert onnx_graph.covers(spec) is not None
    assert onnx_graph.covers(replace(spec, pooling="max")) is None


_PREPARE_WITHOUT_TORCH = """
import json, sys
from ember.cli import main
rc = main(["prepare", sys.argv[1], "--out", sys.argv[2]])
# sympy: ORT's transformer optimizer imports it; a graph written fused does not need that pass.
heavy = ("torch", "transformers", "sympy")
print(json.dumps({"rc": rc, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_prepare_of_a_covered_model_imports_neither_torch_nor_transformers_nor_sympy(
    tiny_dir: Path, tmp_path: Path
) -> None:
    path = families.build(tiny_dir / "bert-shaped", "bert", Task.EMBED, pooling="mean")
    out = tmp_path / "artifact"
    proc = subprocess.run(
        [sys.executable, "-c", _PREPARE_WITHOUT_TORCH, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "loaded": []}
    manifest = json.loads((out / "ember-manifest.json").read_text("utf-8"))
    assert manifest["versions"]["graph_builder"] == onnx_graph.BUILDER
    assert "torch" not in manifest["versions"] and manifest["graph"]["fused"]


def test_bfloat16_checkpoints_are_read(tiny_dir: Path, tmp_path: Path) -> None:
    """numpy has no bfloat16 of its own; ml_dtypes (which onnx imports) gives it one, so
    safetensors.numpy reads such checkpoints and the graph gets their float32 values."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    source = families.build(tiny_dir / "bert-shaped", "bert", Task.EMBED, pooling="mean")
    path = shutil.copytree(source, tmp_path / "bf16")
    weights = load_file(str(path / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, path / "model.safetensors")
    spec = inspect_model(str(path))
    items = items_for(Task.EMBED)
    batch = batch_of(spec, items, rows=len(items), seq=64)
    expected = families.reference(path, "bert", Task.EMBED, batch, pooling="mean")
    for graph in write(spec, tmp_path / "graphs"):
        assert cosines(run(graph, batch), expected).min() >= 0.9999


@pytest.mark.parametrize("fused", [False, True])
def test_large_weights_stream_to_the_data_file(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    """Past the size limit each weight is written to the data file as the graph is built, a
    block of rows at a time from the mapped checkpoint (forced here on a tiny model, with blocks
    of a few rows): the same graph and outputs as one holding its weights, in the artifact's
    layout (page-aligned), and bfloat16 weights stream too."""
    import shutil

    import onnx
    import torch
    from safetensors.torch import load_file, save_file

    from ember.backends import mapped_weights
    from ember.backends.graph_passes import DATA_ALIGNMENT, graph_tensors
    from ember.manifest import DATA_FILE

    source = families.build(tiny_dir / "bert-shaped", "bert", Task.RERANK, pooling="mean")
    path = shutil.copytree(source, tmp_path / "bf16")
    weights = load_file(str(path / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, path / "model.safetensors")
    spec = inspect_model(str(path))
    config = onnx_graph.covers(spec)
    assert config is not None
    inline, streamed = tmp_path / "inline" / "model.onnx", tmp_path / "streamed" / "model.onnx"
    for graph in (inline, streamed):
        graph.parent.mkdir()
    onnx_graph.build_graph(spec, config, path=inline, opset=OPSET, fused=fused)
    monkeypatch.setattr(onnx_graph, "_EXTERNAL_BYTES", 0)
    monkeypatch.setattr(mapped_weights, "_CHUNK_BYTES", 1000)  # several blocks per weight
    onnx_graph.build_graph(spec, config, path=streamed, opset=OPSET, fused=fused)
    assert sorted(p.name for p in streamed.parent.iterdir()) == ["model.onnx", DATA_FILE]
    model = onnx.load(str(streamed), load_external_data=False)
    external = [
        {e.key: e.value for e in t.external_data}
        for t in graph_tensors(model.graph)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert len(external) > 10
    assert all(int(e["offset"]) % DATA_ALIGNMENT == 0 for e in external)
    assert {e["location"] for e in external} == {DATA_FILE}
    batch = batch_of(spec, items_for(Task.RERANK))
    np.testing.assert_array_equal(run(streamed, batch), run(inline, batch))
    assert op_counts(streamed) == op_counts(inline)
