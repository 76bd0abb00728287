"""Building an artifact: export a model to ONNX with pooling in the graph, fuse, quantise,
optimise once, move the weights to external data and verify against torch; then write the
manifest. `artifact.prepare` calls `build` on a temporary folder and renames it into place.

torch, transformers and onnx are imported inside these functions, never at module level.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember import __version__
from ember.backends.graph_passes import (
    externalize,
    fuse,
    quantize,
    quiet,
    release_memory,
    save_optimized,
)
from ember.errors import ModelError
from ember.manifest import (
    DATA_FILE,
    MANIFEST_NAME,
    MODEL_FILE,
    TOKEN_OUTPUT,
    Fusion,
    Manifest,
    Options,
    file_sha256,
    folder_digest,
    ort_version,
)
from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

    from ember.backends.base import FloatArray
    from ember.backends.onnx_graph import BuiltGraph

log = logging.getLogger("ember.backends.artifact")

StepFn = Callable[[str], AbstractContextManager[None]]
"""`with step("export"):` wraps one slow stage, for a progress display or a log line."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
"""Copied when present; only tokenizer.json is required (ember tokenizes with `tokenizers`)."""

# Verification thresholds against the torch wrapper on the same inputs.
_FP32_MIN_COSINE = 0.9999
_INT8_MIN_COSINE = 0.9
_FP32_LOGIT_TOL = 1e-3
_INT8_LOGIT_TOL = 0.25
_VERIFY_ITEMS = (
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding servers should be warm before they say they are ready.",
    "naïve café — déjà vu, Zürich; Привет; 東京は大きな都市です。🚀",
    " ".join(f"word{i} lorem ipsum dolor sit amet" for i in range(80)),
)


def build(spec: ModelSpec, options: Options, *, key: str, out: Path, step: StepFn) -> Manifest:
    """Build the artifact for `spec` into the empty folder `out`; `key` is its cache key."""
    work = out / "work"
    work.mkdir()
    graph = _stage(work, "exported")
    expected: FloatArray | None = None  # None: built without torch, verified in tests only
    # Written already fused (as ORT's optimizer would leave it) unless the raw graph is asked for.
    prefused = options.optimize > 0
    if (built := _build_without_torch(spec, graph, options, step, fused=prefused)) is not None:
        feeds = _sample_feeds(spec, built.inputs)
        fusion = Fusion(fused=prefused, ops=built.fused_ops)
    else:
        with step("load the model"):
            module, input_names = _load_wrapper(spec)
            feeds = _sample_feeds(spec, input_names)
            expected = _reference(module, feeds)
        with step("export to ONNX"):
            _export(
                module,
                feeds=feeds,
                names=input_names,
                outputs=_output_names(spec),
                path=graph,
                opset=options.opset,
            )
        # Peak memory: the torch weights are not needed past the export (verify compares with
        # the reference outputs computed above).
        del module
        release_memory()
        fusion = Fusion(fused=False)
    if options.optimize > 0 and not fusion.fused:
        with step("fuse transformer ops"):
            fusion = fuse(spec, graph, _stage(work, "fused"))
            if fusion.fused:
                graph = _advance(graph, work / "fused")
        release_memory()
    if options.quantize == "int8":
        with step("quantise to int8"):
            quantize(graph, _stage(work, "int8"))
            graph = _advance(graph, work / "int8")
        release_memory()
    model_file = out / MODEL_FILE
    with step(f"optimise (ORT level {options.optimize})"):
        save_optimized(graph, _stage(work, "optimized"), options.optimize)
        graph = _advance(graph, work / "optimized")
        release_memory()
        externalize(graph, model_file, consume=True)
        release_memory()
    with step("verify against torch" if expected is not None else "check the graph runs"):
        verify, inputs = _verify(
            expected, feeds, model_file, options=options, embed=spec.task is Task.EMBED
        )
    shutil.rmtree(work)
    with step("write manifest"):
        _copy_tokenizer(spec.path, out)
        manifest = Manifest(
            key=key,
            spec=spec,
            source_path=str(spec.path),
            source_digest=folder_digest(spec.path),
            options=options,
            model_sha256=file_sha256(model_file),
            model_size=model_file.stat().st_size,
            data_sha256=file_sha256(out / DATA_FILE),
            data_size=(out / DATA_FILE).stat().st_size,
            inputs=inputs,
            output=_output_name(spec),
            fused=fusion.fused,
            fusion=fusion,
            versions=_versions(torch=expected is not None),
            verify=verify,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_manifest(out, manifest)
    return manifest


def _stage(work: Path, name: str) -> Path:
    """The graph file of one pass, in a folder of its own (external data lands beside it)."""
    folder = work / name
    folder.mkdir()
    return folder / "model.onnx"


def _advance(graph: Path, stage: Path) -> Path:
    """Delete the pass input `graph`'s folder once the next pass wrote `stage`: peak disk is
    then two copies of the weights, never more."""
    shutil.rmtree(graph.parent)
    return stage / "model.onnx"


def _output_name(spec: ModelSpec) -> str:
    return "embeddings" if spec.task is Task.EMBED else "logits"


def _output_names(spec: ModelSpec) -> list[str]:
    """The graph's outputs: `_output_name`, then the per-token one on (non-SPLADE) embedders."""
    tokens = spec.task is Task.EMBED and not spec.splade
    return [_output_name(spec)] + ([TOKEN_OUTPUT] if tokens else [])


def _load_wrapper(spec: ModelSpec) -> tuple[torch.nn.Module, list[str]]:
    """The transformers model wrapped so that its output is what `Backend.run` returns:
    pooled (unnormalised) embeddings, or logits. Returns it and its input names."""
    import inspect

    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ember.backends.torch_backend import dense_head, pool, splade_pool

    cls: Any = AutoModel if spec.task is Task.EMBED else AutoModelForSequenceClassification
    if spec.splade:
        cls = AutoModelForMaskedLM
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        # Eager attention: its mask path traces to plain ops that ORT's fusions recognise.
        model = cls.from_pretrained(
            str(spec.path), dtype=torch.float32, attn_implementation="eager", local_files_only=True
        )
    except Exception as exc:
        raise ModelError(f"cannot load weights from {spec.path}: {exc}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    model.eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    embed, method = spec.task is Task.EMBED, spec.pooling
    # Dense modules after pooling, and SPLADE pooling of the masked-LM logits, go in the graph.
    head = dense_head(spec, device="cpu", dtype=torch.float32)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = head

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
            kwargs = dict(zip(names, inputs, strict=True))
            out = self.model(**kwargs)
            if spec.splade:
                return splade_pool(out.logits, kwargs["attention_mask"], method)
            if embed:  # pooled first, then the unpooled hidden state (/embed_all)
                hidden = out.last_hidden_state
                pooled = pool(hidden, kwargs["attention_mask"], method)
                return (pooled if self.head is None else self.head(pooled)), hidden
            logits: torch.Tensor = out.logits
            return logits.float()

    return Wrapper().eval(), names


def _sample_feeds(spec: ModelSpec, names: list[str]) -> dict[str, np.ndarray[Any, Any]]:
    """A right-padded batch of real texts (pairs for rerank) for export and verification."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(spec.tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(min(spec.max_length, 128))
    items: list[Any] = list(_VERIFY_ITEMS)
    if spec.task is Task.RERANK:
        items = [(_VERIFY_ITEMS[0], text) for text in _VERIFY_ITEMS]
    encs = tok.encode_batch(items)
    seq = max(len(e.ids) for e in encs)
    feeds = {name: np.zeros((len(encs), seq), dtype=np.int64) for name in names}
    pad = next((i for t in ("[PAD]", "<pad>") if (i := tok.token_to_id(t)) is not None), 0)
    feeds["input_ids"][:] = pad
    for row, enc in enumerate(encs):
        n = len(enc.ids)
        feeds["input_ids"][row, :n] = enc.ids
        feeds["attention_mask"][row, :n] = 1
        if "token_type_ids" in feeds:
            feeds["token_type_ids"][row, :n] = enc.type_ids
    return feeds


def _export(
    module: torch.nn.Module,
    *,
    feeds: dict[str, np.ndarray[Any, Any]],
    names: list[str],
    outputs: list[str],
    path: Path,
    opset: int,
) -> None:
    import torch

    from ember.backends.export_tables import attach_tables, tables_left_out

    # Trace on two rows, one padded, so the mask is never constant-folded away.
    args = tuple(torch.from_numpy(feeds[name][:2].copy()) for name in names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in [*names, *outputs[1:]]}
    dynamic[outputs[0]] = {0: "batch"}
    # More rows than any id or position the trace looks up.
    rows = max(int(arg.max()) for arg in args) + args[0].shape[1] + 2
    try:
        with quiet(), tables_left_out(module, rows=rows) as tables, torch.inference_mode():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise ModelError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    attach_tables(path, tables)


def _reference(module: torch.nn.Module, feeds: dict[str, np.ndarray[Any, Any]]) -> FloatArray:
    """The torch module's outputs on the sample batch, which the saved graph must reproduce."""
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    first: FloatArray = (out[0] if isinstance(out, tuple) else out).numpy()
    return first


def _verify(
    expected: FloatArray | None,
    feeds: dict[str, np.ndarray[Any, Any]],
    model: Path,
    *,
    options: Options,
    embed: bool,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Run the saved graph on the sample batch; raise if it differs from the torch module's
    `expected` outputs (None: only that it runs and is finite; tests compare with torch).

    Returns the agreement figures and the graph's input names (the exporter drops inputs the
    model ignores, so these, not the wrapper's, are what serving must feed)."""
    from ember.backends.ort_session import create_session, serving_level

    session = create_session(model, threads=1, level=serving_level(options.optimize))
    inputs = tuple(str(i.name) for i in session.get_inputs())
    got: FloatArray = session.run(None, {name: feeds[name] for name in inputs})[0]
    int8 = options.quantize == "int8"
    if not np.isfinite(got).all():
        raise ModelError(f"verification failed: {model} produced non-finite values")
    if expected is None:
        return {}, inputs
    max_diff = float(np.abs(got - expected).max())
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = float(((got * expected).sum(axis=1) / np.maximum(norms, 1e-12)).min())
    result = {"min_cosine": cosine, "max_abs_diff": max_diff}
    if embed:
        floor = _INT8_MIN_COSINE if int8 else _FP32_MIN_COSINE
        if cosine < floor:
            raise ModelError(
                f"verification failed: {model} agrees with the torch model only to cosine "
                f"{cosine:.5f} (< {floor})"
            )
    else:  # logits: compared on their own scale
        tol = (_INT8_LOGIT_TOL if int8 else _FP32_LOGIT_TOL) * max(
            1.0, float(np.abs(expected).max())
        )
        if max_diff > tol:
            raise ModelError(
                f"verification failed: {model} differs from the torch model by {max_diff:.4g} "
                f"(> {tol:.4g})"
            )
    return result, inputs


def _copy_tokenizer(source: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if not (out / "tokenizer.json").is_file():
        raise ModelError(f"{source} has no tokenizer.json (a fast tokenizer file is required)")


def _build_without_torch(
    spec: ModelSpec, graph: Path, options: Options, step: StepFn, *, fused: bool
) -> BuiltGraph | None:
    """Write the graph from the weights (`onnx_graph`) when it covers `spec`; what was built,
    or None for the torch export. This is what keeps torch off a first start (issue 16)."""
    from ember.backends.onnx_graph import build_graph, covers

    config = covers(spec)
    if config is None:
        return None
    try:
        with step("build the ONNX graph from the weights"):
            return build_graph(spec, config, path=graph, opset=options.opset, fused=fused)
    except (KeyError, ValueError, TypeError) as exc:  # a missing weight, an unreadable dtype
        log.info("prepare: %s: %s; exporting with torch instead", spec.name, exc)
        for file in graph.parent.iterdir():
            file.unlink()
        return None


def _versions(*, torch: bool) -> dict[str, str]:
    """What made the artifact; `graph_builder` says which of the two builders wrote the graph."""
    import onnx

    from ember.backends.onnx_graph import BUILDER

    versions = {
        "ember": __version__,
        "onnxruntime": ort_version(),
        "onnx": str(onnx.__version__),
        "graph_builder": "torch.onnx" if torch else BUILDER,
    }
    if torch:
        import torch as torch_module
        import transformers

        versions["torch"] = str(torch_module.__version__)
        versions["transformers"] = str(transformers.__version__)
    return versions


def _write_manifest(out: Path, manifest: Manifest) -> None:
    """Write the manifest last, and flush every file, so a present manifest means complete."""
    for file in out.iterdir():
        with file.open("rb") as fh:
            os.fsync(fh.fileno())
    file = out / MANIFEST_NAME
    with file.open("w", encoding="utf-8") as fh:
        json.dump(manifest.to_dict(), fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


# --- `ember prepare` -------------------------------------------------------------------------
