"""Artifacts: what the manifest records, the cache's keys, atomic writes, damage detection and
the `ember prepare` command."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.backends import artifact, disk_space, export, graph_passes, onnx_graph
from ember.backends.artifact import cache_path, ensure_artifact, prepare_main
from ember.backends.base import Batch
from ember.backends.onnx_backend import OnnxBackend
from ember.bench import tiny_models
from ember.errors import ModelError
from ember.manifest import (
    DATA_FILE,
    MANIFEST_NAME,
    MODEL_FILE,
    Options,
    file_sha256,
    load_manifest,
)
from ember.models import BUILTIN_NAME, Task, inspect_model
from ember.settings import Quantize, Settings

IDS = np.full((2, 8), 2000, dtype=np.int64)
BATCH = Batch(
    input_ids=IDS, attention_mask=np.ones_like(IDS), token_type_ids=np.zeros_like(IDS), real_rows=2
)


def serve(path: Path, settings: Settings) -> OnnxBackend:
    return OnnxBackend.for_model(spec=inspect_model(str(path)), settings=settings, device="cpu")


# --- what an artifact records ----------------------------------------------------------------


def test_an_artifact_folder_is_a_complete_spec(builtin_artifact: Path) -> None:
    spec = inspect_model(str(builtin_artifact))
    assert spec.onnx_artifact
    assert spec.path == builtin_artifact
    assert (spec.name, spec.task, spec.pooling) == (BUILTIN_NAME, Task.EMBED, "mean")
    assert spec.normalize
    assert (spec.max_length, spec.dimension, spec.hidden_size) == (256, 384, 384)
    assert spec.tokenizer_file.is_file()
    capped = inspect_model(str(builtin_artifact), name="minilm", max_input_length=128)
    assert (capped.name, capped.max_length) == ("minilm", 128)


def test_manifest_records_labels_versions_and_hash(
    tiny_classifier: Path, settings: Settings
) -> None:
    path, manifest = ensure_artifact(inspect_model(str(tiny_classifier)), settings)
    spec = inspect_model(str(path))
    assert spec.task is Task.CLASSIFY
    assert spec.labels == ("negative", "neutral", "positive")
    assert manifest.model_size == (path / MODEL_FILE).stat().st_size
    assert manifest.model_sha256 == file_sha256(path / MODEL_FILE)
    assert manifest.data_size == (path / DATA_FILE).stat().st_size
    assert manifest.data_sha256 == file_sha256(path / DATA_FILE)
    assert manifest.model_size < manifest.data_size  # the weights live in the data file
    # Built without torch (onnx_graph); its agreement with torch is test_onnx_graph's to check.
    assert {"ember", "onnxruntime", "onnx"} <= manifest.versions.keys()
    assert manifest.versions["graph_builder"] == onnx_graph.BUILDER
    assert "torch" not in manifest.versions and manifest.verify == {}
    assert manifest.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert manifest.options == Options()


# --- the cache ---------------------------------------------------------------------------------


def test_cache_hit_miss_and_reprepare(
    tiny_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cache_dir=tmp_path, threads=1)
    spec = inspect_model(str(tiny_plain))
    first, _ = ensure_artifact(spec, settings)  # a miss: prepared now
    assert first.parent == tmp_path / "onnx"

    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not prepare again")

    with monkeypatch.context() as patch:
        patch.setattr(export, "build", no_build)
        again, _ = ensure_artifact(spec, settings)
    assert again == first

    int8 = settings.model_copy(update={"quantize": "int8"})
    quantized, manifest = ensure_artifact(spec, int8)  # another option: another artifact
    assert quantized != first
    assert manifest.options.quantize == "int8"
    backend = serve(quantized, int8)
    assert backend.describe()["dtype"] == "int8"
    fp32 = serve(first, settings).run(BATCH)
    assert float(np.dot(backend.run(BATCH)[0], fp32[0])) > 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")) == (
        sorted([first.name, quantized.name])
    )


def test_cache_key_follows_the_source_and_the_graph_options(
    tiny_plain: Path, tmp_path: Path, settings: Settings
) -> None:
    source = tmp_path / "model"
    shutil.copytree(tiny_plain, source)
    spec = inspect_model(str(source))
    key = cache_path(settings, spec, Options())
    assert cache_path(settings, spec, Options()) == key
    assert cache_path(settings, spec, Options(optimize=0)) != key
    assert cache_path(settings, inspect_model(str(source), pooling="cls"), Options()) != key
    config = source / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_path(settings, spec, Options()) != key  # a changed model is prepared again


# --- atomic writes -----------------------------------------------------------------------------


def test_a_failed_prepare_leaves_nothing_and_the_next_one_cleans_up(
    tiny_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cache_dir=tmp_path, threads=1)
    spec = inspect_model(str(tiny_plain))
    dest = cache_path(settings, spec, Options())

    def half_export(*args: Any, path: Path, **kwargs: Any) -> None:
        path.write_bytes(b"half a graph")
        raise ModelError("export failed")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_export", half_export)
        patch.setattr(onnx_graph, "build_graph", half_export)  # the torch-free builder too
        with pytest.raises(ModelError, match="export failed"):
            ensure_artifact(spec, settings)
    assert not dest.exists()
    # What a killed prepare leaves (no `finally` ran): a temp folder beside the destination.
    stale = dest.parent / f".{dest.name}.tmp-1-dead"
    stale.mkdir()
    (stale / MODEL_FILE).write_bytes(b"half")
    path, _ = ensure_artifact(spec, settings)
    assert path == dest
    assert [p.name for p in dest.parent.iterdir() if ".tmp-" in p.name] == []


# --- damage is detected, never served ----------------------------------------------------------


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = path / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    return damage


def _garble(name: str) -> Callable[[Path], None]:
    """Same size, different bytes: only the hash can tell."""

    def damage(path: Path) -> None:
        file = path / name
        data = bytearray(file.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        file.write_bytes(bytes(data))

    return damage


def _garble_header(path: Path) -> None:
    model = path / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[:256] = b"\xff" * 256
    model.write_bytes(bytes(data))


def _edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = path / MANIFEST_NAME
        data = json.loads(file.read_text())
        change(data)
        file.write_text(json.dumps(data))

    return damage


def _bad_json(path: Path) -> None:
    (path / MANIFEST_NAME).write_text('{"format_version": 1, "key": ')


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-model": (_truncate(MODEL_FILE), MODEL_FILE),
    "garbled-graph": (_garble(MODEL_FILE), MODEL_FILE),
    "garbled-header": (_garble_header, MODEL_FILE),
    "missing-model": (lambda p: (p / MODEL_FILE).unlink(), MODEL_FILE),
    "truncated-weights": (_truncate(DATA_FILE), DATA_FILE),
    "garbled-weights": (_garble(DATA_FILE), DATA_FILE),
    "missing-weights": (lambda p: (p / DATA_FILE).unlink(), DATA_FILE),
    "weights-manifest-size": (
        _edit_manifest(lambda d: d["graph"]["data"].update(size=1)),
        DATA_FILE,
    ),
    "weights-manifest-hash": (
        _edit_manifest(lambda d: d["graph"]["data"].update(sha256="0" * 64)),
        DATA_FILE,
    ),
    "weights-manifest-file": (
        _edit_manifest(lambda d: d["graph"]["data"].update(file="../elsewhere")),
        MANIFEST_NAME,
    ),
    "format-1": (_edit_manifest(lambda d: d.update(format_version=1)), MANIFEST_NAME),
    "manifest-not-json": (_bad_json, MANIFEST_NAME),
    "manifest-size": (_edit_manifest(lambda d: d["graph"].update(size=1)), MODEL_FILE),
    "manifest-hash": (_edit_manifest(lambda d: d["graph"].update(sha256="0" * 64)), MODEL_FILE),
    "manifest-field": (_edit_manifest(lambda d: d["model"].update(max_length="x")), MANIFEST_NAME),
    "manifest-task": (_edit_manifest(lambda d: d["model"].update(task="dance")), MANIFEST_NAME),
    "manifest-format": (_edit_manifest(lambda d: d.update(format_version=99)), MANIFEST_NAME),
    "missing-tokenizer": (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_artifacts_raise_naming_the_file(
    damage: tuple[Callable[[Path], None], str],
    tiny_artifact: Path,
    tmp_path: Path,
    settings: Settings,
) -> None:
    harm, culprit = damage
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, copy)
    harm(copy)
    with pytest.raises(ModelError) as caught:
        serve(copy, settings)
    assert str(copy / culprit) in caught.value.message


# --- `ember prepare` ---------------------------------------------------------------------------


def test_prepare_reports_an_up_to_date_artifact(
    tiny_plain: Path, tiny_artifact: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = prepare_main(settings, source=str(tiny_plain), out=None, optimize=None, force=False)
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == str(tiny_artifact)
    assert "already prepared" in err


def test_prepare_to_a_folder_and_serve_it(
    tiny_plain: Path,
    tiny_artifact: Path,
    tmp_path: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "art"
    # Level 0 keeps the raw export; the serving session then optimises it at start.
    code = prepare_main(settings, source=str(tiny_plain), out=str(out), optimize=0, force=False)
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    backend = serve(out, settings)
    assert backend.describe()["session"]["graph_optimization_level"] == 99
    np.testing.assert_allclose(
        backend.run(BATCH), serve(tiny_artifact, settings).run(BATCH), atol=1e-5
    )
    # Other options into the same folder need --force, which replaces it.
    args: dict[str, Any] = {"source": str(tiny_plain), "out": str(out), "optimize": 2}
    assert prepare_main(settings, **args, force=False) == 1
    assert "--force" in capsys.readouterr().err
    assert prepare_main(settings, **args, force=True) == 0
    assert load_manifest(out).options.optimize == 2


@pytest.mark.parametrize(
    ("source", "out", "message"),
    [
        ("{tmp}/nowhere", None, "does not exist"),
        ("{artifact}", None, "already a prepared artifact"),
        ("{plain}", "{tmp}", "is not an ember artifact"),
    ],
)
def test_prepare_errors_are_one_line(  # noqa: PLR0917 - parameters and fixtures
    source: str,
    out: str | None,
    message: str,
    tiny_plain: Path,
    tiny_artifact: Path,
    tmp_path: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "something").write_text("not an artifact")
    names = {"tmp": tmp_path, "artifact": tiny_artifact, "plain": tiny_plain}
    code = prepare_main(
        settings,
        source=source.format(**names),
        out=out and out.format(**names),
        optimize=None,
        force=False,
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("ember: error: ")
    assert message in captured.err


# --- disk space ----------------------------------------------------------------------------------


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    real = shutil.disk_usage

    def disk_usage(path: Any) -> Any:
        return real(path)._replace(free=free)

    monkeypatch.setattr(disk_space.shutil, "disk_usage", disk_usage)


def test_prepare_refuses_up_front_naming_the_bytes_needed_and_free(
    tiny_plain: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(cache_dir=tmp_path, threads=1)
    weights = (tiny_plain / "model.safetensors").stat().st_size
    needed = disk_space.bytes_needed(tiny_plain)
    assert 2 * weights < needed < 2.1 * weights + (tiny_plain / "tokenizer.json").stat().st_size
    _free(monkeypatch, needed - 1)
    monkeypatch.setattr(export, "build", lambda *a, **k: pytest.fail("nothing may be built"))
    code = prepare_main(settings, source=str(tiny_plain), out=None, optimize=None, force=False)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert f"({needed} bytes: twice the float32 weights and the tokenizer)" in err
    assert f"({needed - 1} bytes) is free" in err


@pytest.mark.parametrize(
    ("failure", "free"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 1 << 30),
        # ORT's writers fail without an errno; the next reader then sees a truncated protobuf.
        (RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf parsing failed."), 0),
    ],
    ids=["enospc", "invalid-protobuf-on-a-full-disk"],
)
def test_a_disk_that_fills_up_during_prepare_is_named_as_such(
    failure: Exception,
    free: int,
    tiny_plain: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(cache_dir=tmp_path, threads=1)
    spec = inspect_model(str(tiny_plain))

    def full(*args: Any, **kwargs: Any) -> None:
        _free(monkeypatch, free)  # the disk fills up while the graph is written
        raise failure

    monkeypatch.setattr(export, "save_optimized", full)
    with pytest.raises(ModelError, match=r"ran out of disk space: .* needs about .* bytes"):
        ensure_artifact(spec, settings)
    assert [p.name for p in (tmp_path / "onnx").iterdir() if ".tmp-" in p.name] == []


def test_prepare_peak_disk_is_at_most_twice_the_artifact(
    tiny_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured where the peak is: when a pass has written its output and is about to delete
    its input."""
    settings = Settings(cache_dir=tmp_path, threads=1)
    peaks: list[int] = []
    advance = export._advance

    def measured(graph: Path, stage: Path) -> Path:
        work = graph.parent.parent
        peaks.append(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()))
        return advance(graph, stage)

    monkeypatch.setattr(export, "_advance", measured)
    _, manifest = ensure_artifact(inspect_model(str(tiny_plain)), settings)
    assert len(peaks) == 1  # optimised (the graph is written fused: onnx_graph)
    # The passes' graphs carry a few KB the final one folds away: 2.008x on this tiny model.
    assert max(peaks) <= 2.02 * (manifest.model_size + manifest.data_size)
    assert max(peaks) <= disk_space.bytes_needed(tiny_plain)  # what the up-front check asks


# --- fusions: recorded, and never failing silently -----------------------------------------------


def test_the_manifest_and_describe_record_which_fusions_applied(
    tiny_artifact: Path, settings: Settings
) -> None:
    manifest = load_manifest(tiny_artifact)
    assert manifest.fusion is not None
    assert manifest.fusion.fused
    # Written fused by onnx_graph (as ORT's "bert" optimiser fuses it): no optimiser ran.
    assert manifest.fusion.model_type is None
    assert manifest.fusion.ops["Attention"] == 2  # one per layer
    assert manifest.fusion.error is None
    # What `ember prepare` prints: the fusions, not "onnxruntime has none".
    assert manifest.fusion.summary("bert") == (
        "transformer fusions (written fused from the weights): "
        "Attention 2, BiasGelu 2, EmbedLayerNormalization 1"
    )
    assert serve(tiny_artifact, settings).describe()["optimization"] == manifest.fusion.to_dict()


def test_a_failed_fusion_is_said_recorded_and_served_unfused(  # noqa: PLR0917 - fixtures
    tiny_plain: Path,
    tiny_artifact: Path,
    tmp_path: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def too_large(*args: Any, **kwargs: Any) -> dict[str, int]:
        raise ValueError("Failed to serialize proto")  # the 2 GB protobuf limit's message

    monkeypatch.setattr(graph_passes, "_run_fusions", too_large)
    monkeypatch.setattr(onnx_graph, "covers", lambda spec: None)  # the torch export's path
    out = tmp_path / "art"
    code = prepare_main(settings, source=str(tiny_plain), out=str(out), optimize=None, force=False)
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: transformer fusions failed" in err
    assert "ValueError: Failed to serialize proto" in err
    fusion = load_manifest(out).fusion
    assert fusion is not None
    assert (fusion.fused, fusion.error) == (False, "ValueError: Failed to serialize proto")
    backend = serve(out, settings)
    assert backend.describe()["optimization"]["error"] == fusion.error
    np.testing.assert_allclose(
        backend.run(BATCH), serve(tiny_artifact, settings).run(BATCH), atol=1e-5
    )


def _family(path: Path, model_type: str) -> Path:
    """A tiny random-weight model of another family, saved with the test tokenizer."""
    import torch
    import transformers

    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config: Any
    if model_type == "qwen3":
        config = transformers.Qwen3Config(
            vocab_size=tiny_models.VOCAB_SIZE,
            intermediate_size=64,
            num_key_value_heads=1,
            head_dim=16,
            **size,
        )
    else:
        config = transformers.DebertaV2Config(
            vocab_size=tiny_models.VOCAB_SIZE, intermediate_size=64, **size
        )
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    tiny_models.copy_tokenizer(path)
    return path


@pytest.mark.parametrize(
    ("model_type", "pooling", "ort_type", "fused"),
    [("deberta-v2", "mean", "bert", True), ("qwen3", "lasttoken", "qwen3", False)],
)
def test_non_bert_families_get_their_fusions_recorded(  # noqa: PLR0917 - parameters and fixtures
    model_type: str, pooling: str, ort_type: str, fused: bool, tmp_path: Path, settings: Settings
) -> None:
    source = _family(tmp_path / model_type, model_type)
    _, manifest = ensure_artifact(inspect_model(str(source), pooling=pooling), settings)
    assert manifest.fusion is not None
    assert (manifest.fusion.model_type, manifest.fusion.fused) == (ort_type, fused)
    assert manifest.verify["min_cosine"] > 0.9999


# --- large models: external data through every pass ---------------------------------------------


@pytest.mark.parametrize(
    # ("int8", 0): the quantiser writes the position ids (a Constant node's value) as external
    # data, which externalising once left pointing at another tensor's bytes (garbage ids).
    ("quantize", "optimize"),
    [("none", 2), ("int8", 2), ("none", 0), ("int8", 0)],
)
def test_every_pass_reads_and_writes_external_data(
    quantize: Quantize,
    optimize: int,
    tiny_plain: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a model over 2 GB goes through, forced on a tiny one: the exporter writes each
    weight to a file of its own (as torch does past the protobuf limit), and every later pass
    must read that and write its own graph with external data."""
    import onnx

    real_export, real_advance = export._export, export._advance
    stages: dict[str, list[str]] = {}

    def export_like_a_large_model(*args: Any, path: Path, **kwargs: Any) -> None:
        real_export(*args, path=path, **kwargs)
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False)
        stages["exported"] = sorted(p.name for p in path.parent.iterdir())

    def advance(graph: Path, stage: Path) -> Path:
        stages[stage.name] = sorted(p.name for p in stage.iterdir())
        return real_advance(graph, stage)

    monkeypatch.setattr(export, "_export", export_like_a_large_model)
    monkeypatch.setattr(export, "_advance", advance)
    monkeypatch.setattr(onnx_graph, "covers", lambda spec: None)  # the torch export's path
    settings = Settings(cache_dir=tmp_path, threads=1, quantize=quantize)
    spec = inspect_model(str(tiny_plain))
    options = Options(quantize=quantize, optimize=optimize)
    dest = cache_path(settings, spec, options)
    manifest = artifact.prepare(spec, options, dest=dest, step=artifact.log_steps)
    assert len(stages["exported"]) > 10  # model.onnx and one file per weight
    written = ["model.onnx", "model.onnx.data"]
    assert stages.get("fused", written) == written
    assert stages.get("int8", written) == written
    if optimize or quantize == "int8":
        assert stages["optimized"] == written
    else:  # level 0 moves the export as it is, its weight files with it
        assert stages["optimized"] == stages["exported"]
    assert manifest.fusion is not None
    assert manifest.fusion.fused == (optimize > 0)
    path = dest
    assert manifest.verify["min_cosine"] > (0.99 if quantize == "int8" else 0.9999)
    assert serve(path, settings).run(BATCH).shape == (2, tiny_models.HIDDEN)


def test_an_artifact_prepared_before_fusions_were_recorded_still_serves(
    tiny_artifact: Path, tmp_path: Path, settings: Settings
) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, copy)
    _edit_manifest(lambda d: d.pop("optimization"))(copy)
    assert load_manifest(copy).fusion is None
    assert serve(copy, settings).describe()["optimization"] == {"fused": True}


def test_fusions_run_on_the_graph_without_its_weights(
    tiny_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORT's optimiser gets the exported graph without its external data (peak memory): it
    reads the values its fusions look at from the files, one at a time, and makes the same
    fused graph, with the same outputs, as from the graph with its weights loaded."""
    import onnx
    import onnxruntime as ort

    spec = inspect_model(str(tiny_plain))
    module, names = export._load_wrapper(spec)
    feeds = export._sample_feeds(spec, names)
    graphs = {}
    for kind in ("inline", "external", "fused-inline", "fused-external"):
        (tmp_path / kind).mkdir()
        graphs[kind] = tmp_path / kind / "model.onnx"
    output_names = export._output_names(spec)
    export._export(
        module, feeds=feeds, names=names, outputs=output_names, path=graphs["inline"], opset=17
    )
    proto = onnx.load(str(graphs["inline"]))
    # As torch writes a graph past 2 GB: a file per weight.
    onnx.save_model(
        proto, str(graphs["external"]), save_as_external_data=True, all_tensors_to_one_file=False
    )
    read: list[str] = []
    to_array = onnx.numpy_helper.to_array

    def recording(tensor: Any, base_dir: str = "") -> Any:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            read.append(tensor.name)
        return to_array(tensor, base_dir)

    fused = graph_passes.fuse(spec, graphs["inline"], graphs["fused-inline"])
    monkeypatch.setattr(onnx.numpy_helper, "to_array", recording)
    fused_external = graph_passes.fuse(spec, graphs["external"], graphs["fused-external"])
    assert fused_external == fused and fused.ops["Attention"] == 2
    # Read from the files when a fusion looks (and let go): the MatMul weights it packs, the
    # tables whose shapes EmbedLayerNormalization checks.
    assert any(name.startswith("onnx::MatMul") for name in read)
    assert os.getcwd() != str(graphs["external"].parent)  # the working folder is given back
    outputs = []
    for kind in ("fused-inline", "fused-external"):
        session = ort.InferenceSession(str(graphs[kind]), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()}))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])


def test_large_embedding_tables_are_left_out_of_the_torch_export(
    tiny_plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's exporter copies every weight it serialises twice over: a large table is exported
    as a few rows and given its real rows afterwards (forced here on the tiny model's
    word-embedding table). The artifact still agrees with torch."""
    from ember.backends import export_tables

    attached: dict[str, tuple[int, ...]] = {}
    real_attach = export_tables.attach_tables

    def attach(graph: Path, tables: dict[str, Any]) -> None:
        import onnx

        (initializer,) = (
            t
            for t in onnx.load(str(graph), load_external_data=False).graph.initializer
            if t.name in tables
        )
        attached[initializer.name] = tuple(initializer.dims)  # as exported: a few rows
        real_attach(graph, tables)

    monkeypatch.setattr(export_tables, "TABLE_BYTES", 1)
    monkeypatch.setattr(export_tables, "attach_tables", attach)
    monkeypatch.setattr(onnx_graph, "covers", lambda spec: None)  # the torch export's path
    settings = Settings(cache_dir=tmp_path, threads=1)
    _, manifest = ensure_artifact(inspect_model(str(tiny_plain)), settings)
    ((name, dims),) = attached.items()
    assert name == "model.embeddings.word_embeddings.weight"
    assert dims[0] < tiny_models.VOCAB_SIZE and dims[1] == tiny_models.HIDDEN
    assert manifest.verify["min_cosine"] > 0.9999
    assert manifest.fusion is not None and manifest.fusion.ops["EmbedLayerNormalization"] == 1


def test_a_tied_table_is_exported_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table that also feeds a projection (tied weights, as a masked-LM head) stays whole: the
    projection's folded weight must be the real one. Others come back after the export."""
    import torch

    from ember.backends import export_tables

    monkeypatch.setattr(export_tables, "TABLE_BYTES", 1)
    tied, plain = torch.nn.Module(), torch.nn.Module()
    tied.table, tied.head = torch.nn.Embedding(100, 4), torch.nn.Linear(4, 100)
    tied.head.weight = tied.table.weight
    plain.table = torch.nn.Embedding(100, 4)
    weight = plain.table.weight
    with export_tables.tables_left_out(tied, rows=10) as left_out:
        assert left_out == {} and tied.table.weight.shape == (100, 4)
    with export_tables.tables_left_out(plain, rows=10) as left_out:
        assert plain.table.weight.shape == (10, 4)
        assert list(left_out) == ["table.weight"] and left_out["table.weight"] is weight
    assert plain.table.weight is weight
