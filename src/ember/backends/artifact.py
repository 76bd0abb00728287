"""Prepared ONNX artifacts: `ember prepare` builds them, the ONNX backend serves them.

An artifact is a folder holding `model.onnx` (exported with pooling in the graph, fused,
optionally int8, optimised once) with its weights in `model.onnx.data` (ONNX external data,
which ONNX Runtime memory-maps), the tokenizer files and `ember-manifest.json`, which records
everything serving needs (task, pooling, limits, labels, prompts) so that serving an artifact
reads no other file. Artifacts are written to a temporary sibling and renamed into place, so a
killed prepare never leaves half of one; a damaged one raises `ModelError` naming the file.

Serving-side functions (`spec_from_artifact`, `load_manifest`, `ensure_artifact` on a cache
hit) import only the standard library and ember; torch, transformers and onnx are imported
inside the prepare-path functions alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember import __version__
from ember.errors import EmberError, ModelError
from ember.models import ModelSpec, Task, folder_digest, inspect_model
from ember.settings import Quantize, Settings

if TYPE_CHECKING:
    import torch

    from ember.backends.base import FloatArray

log = logging.getLogger("ember.backends.artifact")

MANIFEST_NAME = "ember-manifest.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
"""The graph's initializers as ONNX external data. ONNX Runtime maps the file instead of copying
it into the heap, so the pages that serving never reads (most rows of the word-embedding
table: 45 MiB of all-MiniLM-L6-v2's 86 MB) stay out of RSS (onnx_notes.md)."""
DATA_ALIGNMENT = 4096
"""Each external tensor starts at a page boundary, so a mapped tensor shares no page."""
DATA_MIN_BYTES = 1024
"""Initializers smaller than this stay inside the graph file (shapes, scalars)."""
FORMAT_VERSION = 2
"""Part of the cache key, so that a new layout or graph recipe prepares again. 2: weights in
`DATA_FILE`, residual Add + LayerNormalization instead of SkipLayerNormalization (1: weights
inside model.onnx, SkipLayerNormalization)."""
OPSET = 17
"""ONNX opset of the export: 17 has LayerNormalization, which ORT's fusions expect."""
DEFAULT_OPTIMIZE = 2
"""ORT level baked into the saved graph: 2 (extended) is the highest level whose output is not
tied to the preparing machine's CPU (99 adds layout transforms ORT marks hardware-specific)."""
OPTIMIZE_LEVELS = (0, 1, 2, 99)
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

# Model types whose encoder ORT's "bert" fusions recognise (attention, embed+layernorm, gelu).
_BERT_LIKE = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "ernie"}
)
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

StepFn = Callable[[str], AbstractContextManager[None]]
"""`with step("export"):` wraps one slow stage, for a progress display or a log line."""


# --- options, keys and the manifest ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    """What, besides the source model, changes the prepared graph."""

    quantize: Quantize = "none"
    """`none` or `int8` (dynamic: s8 weights per channel, u8 activations)."""
    optimize: int = DEFAULT_OPTIMIZE
    """0: the raw export, optimised by ORT at every start; 1/2/99: fused and optimised once."""
    opset: int = OPSET

    def to_dict(self) -> dict[str, Any]:
        return {"quantize": self.quantize, "optimize": self.optimize, "opset": self.opset}


def options_from(settings: Settings, optimize: int | None = None) -> Options:
    return Options(
        quantize=settings.quantize, optimize=DEFAULT_OPTIMIZE if optimize is None else optimize
    )


def source_identity(path: Path) -> str:
    """A cheap fingerprint of a model folder: file names, sizes and mtimes (stat only).

    Used for the cache key at every start; the manifest also stores the full content digest.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or rel.endswith(".md"):
            continue
        stat = file.stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def artifact_key(spec: ModelSpec, options: Options) -> str:
    """The cache key: source identity, what shapes the graph (task, pooling, options), versions."""
    parts = {
        "format": FORMAT_VERSION,
        "ember": __version__,
        "onnxruntime": _ort_version(),
        "source": source_identity(spec.path),
        "task": spec.task.value,
        "pooling": spec.pooling if spec.task is Task.EMBED else None,
        "options": options.to_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(settings: Settings, spec: ModelSpec, options: Options) -> Path:
    """Where the artifact for `spec` with `options` lives in the cache."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", spec.name).strip("-.") or "model"
    return settings.cache_dir / "onnx" / f"{slug}-{artifact_key(spec, options)}"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The contents of `ember-manifest.json`."""

    key: str
    name: str
    source_path: str
    source_digest: str
    task: Task
    pooling: str
    normalize: bool
    max_length: int
    dimension: int | None
    labels: tuple[str, ...]
    hidden_size: int
    prompts: dict[str, str]
    architecture: str
    model_type: str
    options: Options
    model_sha256: str
    model_size: int
    data_sha256: str
    data_size: int
    inputs: tuple[str, ...]
    output: str
    fused: bool
    versions: dict[str, str] = field(default_factory=dict)
    verify: dict[str, float] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "created": self.created,
            "source": {"path": self.source_path, "digest": self.source_digest},
            "model": {
                "name": self.name,
                "task": self.task.value,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "max_length": self.max_length,
                "dimension": self.dimension,
                "labels": list(self.labels),
                "hidden_size": self.hidden_size,
                "prompts": self.prompts,
                "architecture": self.architecture,
                "model_type": self.model_type,
            },
            "graph": {
                "file": MODEL_FILE,
                "sha256": self.model_sha256,
                "size": self.model_size,
                "data": {"file": DATA_FILE, "sha256": self.data_sha256, "size": self.data_size},
                "inputs": list(self.inputs),
                "output": self.output,
                "fused": self.fused,
            },
            "options": self.options.to_dict(),
            "versions": self.versions,
            "verify": self.verify,
        }


class _Reader:
    """Typed access to a parsed manifest; any missing or mistyped field names the file."""

    def __init__(self, data: dict[str, Any], file: Path) -> None:
        self.data = data
        self.file = file

    def section(self, name: str) -> _Reader:
        value = self.data.get(name)
        if not isinstance(value, dict):
            raise self.bad(name)
        return _Reader(value, self.file)

    def bad(self, name: str) -> ModelError:
        return ModelError(
            f"{self.file} is not a valid ember manifest (field {name!r}); "
            "prepare the model again with `ember prepare --force`"
        )

    def get(self, name: str, kind: type[Any]) -> Any:
        value = self.data.get(name)
        # bool is an int subclass: do not let `true` pass as a length.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.bad(name)
        return value

    def opt_int(self, name: str) -> int | None:
        value = self.data.get(name)
        return None if value is None else int(self.get(name, int))


def _parse_manifest(data: dict[str, Any], file: Path) -> Manifest:
    root = _Reader(data, file)
    version = root.get("format_version", int)
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{file} has artifact format {version}; this ember reads format {FORMAT_VERSION}: "
            "prepare the model again"
        )
    source, model, graph = root.section("source"), root.section("model"), root.section("graph")
    options, versions = root.section("options"), root.section("versions")
    try:
        task = Task(model.get("task", str))
    except ValueError:
        raise model.bad("task") from None
    labels = model.get("labels", list)
    prompts = model.get("prompts", dict)
    inputs = graph.get("inputs", list)
    if graph.get("file", str) != MODEL_FILE or not inputs:
        raise graph.bad("file")
    weights = graph.section("data")
    if weights.get("file", str) != DATA_FILE:
        raise weights.bad("file")
    return Manifest(
        key=root.get("key", str),
        created=str(data.get("created", "")),
        name=model.get("name", str),
        source_path=source.get("path", str),
        source_digest=source.get("digest", str),
        task=task,
        pooling=model.get("pooling", str),
        normalize=model.get("normalize", bool),
        max_length=model.get("max_length", int),
        dimension=model.opt_int("dimension"),
        labels=tuple(str(label) for label in labels),
        hidden_size=model.get("hidden_size", int),
        prompts={str(k): str(v) for k, v in prompts.items()},
        architecture=model.get("architecture", str),
        model_type=model.get("model_type", str),
        options=Options(
            quantize=_quantize_option(options),
            optimize=options.get("optimize", int),
            opset=options.get("opset", int),
        ),
        model_sha256=graph.get("sha256", str),
        model_size=graph.get("size", int),
        data_sha256=weights.get("sha256", str),
        data_size=weights.get("size", int),
        inputs=tuple(str(name) for name in inputs),
        output=graph.get("output", str),
        fused=graph.get("fused", bool),
        versions={str(k): str(v) for k, v in versions.data.items()},
        verify={str(k): float(v) for k, v in root.section("verify").data.items()},
    )


def _quantize_option(options: _Reader) -> Quantize:
    value = options.get("quantize", str)
    if value == "int8":
        return "int8"
    if value == "none":
        return "none"
    raise options.bad("quantize")


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def load_manifest(path: Path) -> Manifest:
    """Read and check an artifact folder's manifest and that its files are there, at the size
    recorded (stat only; `verify_model_hash` checks the bytes). Raises `ModelError` naming the
    file at fault."""
    file = path / MANIFEST_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is not an ember artifact: {MANIFEST_NAME} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file} is not readable JSON ({exc}); prepare the model again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file} does not hold a JSON object; prepare the model again")
    try:
        manifest = _parse_manifest(data, file)
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. a non-numeric figure
        raise ModelError(f"{file} is not a valid ember manifest ({exc}); prepare again") from None
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelError(f"{tokenizer} is missing from the artifact; prepare the model again")
    for name, expected in ((MODEL_FILE, manifest.model_size), (DATA_FILE, manifest.data_size)):
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise ModelError(
                f"{file} is missing from the artifact; prepare the model again"
            ) from None
        if size != expected:
            raise ModelError(
                f"{file} is {size} bytes but the manifest records {expected}: the "
                "artifact is damaged; prepare the model again with `ember prepare --force`"
            )
    return manifest


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_model_hash(path: Path, manifest: Manifest) -> None:
    """Check the graph's and its weights' bytes against the manifest (≈65 ms for 90 MB with
    SHA-NI). Read with `read`, not mapped: hashing adds page cache, not RSS."""
    for name, expected in ((MODEL_FILE, manifest.model_sha256), (DATA_FILE, manifest.data_sha256)):
        file = path / name
        if file_sha256(file) != expected:
            raise ModelError(
                f"{file} does not match the sha256 in its manifest: the artifact is damaged; "
                "prepare the model again with `ember prepare --force`"
            )


def spec_from_artifact(path: Path, *, name: str | None, max_input_length: int | None) -> ModelSpec:
    """The ModelSpec recorded in an artifact folder, capped at `max_input_length`."""
    manifest = load_manifest(path)
    max_length = manifest.max_length
    if max_input_length is not None:
        max_length = min(max_length, max_input_length)
    return ModelSpec(
        name=name or manifest.name,
        source=str(path),
        path=path,
        task=manifest.task,
        max_length=max_length,
        pooling=manifest.pooling,
        normalize=manifest.normalize,
        dimension=manifest.dimension,
        labels=manifest.labels,
        architecture=manifest.architecture,
        model_type=manifest.model_type,
        hidden_size=manifest.hidden_size,
        prompts=dict(manifest.prompts),
        onnx_artifact=True,
    )


# --- finding or building an artifact ---------------------------------------------------------


@contextmanager
def log_steps(label: str) -> Iterator[None]:
    """A `StepFn` for serving: one log line per prepare stage, with its duration."""
    started = time.perf_counter()
    yield
    log.info("prepare: %s took %.2f s", label, time.perf_counter() - started)


def ensure_artifact(
    spec: ModelSpec, settings: Settings, *, step: StepFn = log_steps
) -> tuple[Path, Manifest]:
    """The artifact for `spec`: the folder itself, the cached one, or one prepared now."""
    if spec.onnx_artifact:
        return spec.path, load_manifest(spec.path)
    options = options_from(settings)
    dest = cache_path(settings, spec, options)
    if is_artifact(dest):
        return dest, load_manifest(dest)
    log.info("%s: no prepared ONNX artifact in the cache; preparing %s", spec.name, dest)
    manifest = prepare(spec, options, dest=dest, step=step)
    return dest, manifest


def _uncapped(spec: ModelSpec) -> ModelSpec:
    """The spec at the model's own max length: the artifact must not bake in a serving cap."""
    full = inspect_model(str(spec.path), name=spec.name, pooling=spec.pooling)
    return replace(spec, max_length=full.max_length)


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Serialise prepares of one destination (replicas may share a cache volume)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_file = dest.parent / f".{dest.name}.lock"
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(
    spec: ModelSpec, options: Options, *, dest: Path, step: StepFn, force: bool = False
) -> Manifest:
    """Build the artifact for `spec` at `dest`, atomically; returns its manifest.

    Under a lock per destination: a prepare that finds `dest` already built (by another
    process) uses it unless `force`. Leftovers of killed prepares are removed first.
    """
    if options.optimize not in OPTIMIZE_LEVELS:
        raise ModelError(f"--optimize must be one of {OPTIMIZE_LEVELS}, not {options.optimize}")
    if options.quantize not in ("none", "int8"):
        raise ModelError(f"--quantize must be none or int8, not {options.quantize!r}")
    with _locked(dest):
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if is_artifact(dest) and not force:
            return load_manifest(dest)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            manifest = _build(_uncapped(spec), options, out=tmp, step=step)
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished `tmp` to `dest`, replacing an old artifact there."""
    old: Path | None = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.tmp-old-{secrets.token_hex(4)}"
        dest.rename(old)
    tmp.rename(dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the prepare pipeline (torch, transformers and onnx are imported only below) ---------------


def _build(spec: ModelSpec, options: Options, *, out: Path, step: StepFn) -> Manifest:
    work = out / "work"
    work.mkdir()
    with step("load the model"):
        module, input_names = _load_wrapper(spec)
        feeds = _sample_feeds(spec, input_names)
    with step("export to ONNX"):
        exported = work / "exported.onnx"
        _export(
            module,
            feeds=feeds,
            names=input_names,
            output=_output_name(spec),
            path=exported,
            opset=options.opset,
        )
    graph, fused = exported, False
    if options.optimize > 0:
        with step("fuse transformer ops"):
            fused_path = work / "fused.onnx"
            fused = _fuse(spec, exported, fused_path)
            graph = fused_path if fused else exported
    if options.quantize == "int8":
        with step("quantise to int8"):
            quantized = work / "int8.onnx"
            _quantize(graph, quantized)
            graph = quantized
    model_file = out / MODEL_FILE
    with step(f"optimise (ORT level {options.optimize})"):
        _save_optimized(graph, work / "optimized.onnx", options.optimize)
        _externalize(work / "optimized.onnx", model_file)
    with step("verify against torch"):
        verify, inputs = _verify(
            module, feeds, model_file, options=options, embed=spec.task is Task.EMBED
        )
    shutil.rmtree(work)
    with step("write manifest"):
        _copy_tokenizer(spec.path, out)
        manifest = Manifest(
            key=artifact_key(spec, options),
            name=spec.name,
            source_path=str(spec.path),
            source_digest=folder_digest(spec.path),
            task=spec.task,
            pooling=spec.pooling,
            normalize=spec.normalize,
            max_length=spec.max_length,
            dimension=spec.dimension,
            labels=spec.labels,
            hidden_size=spec.hidden_size,
            prompts=dict(spec.prompts),
            architecture=spec.architecture,
            model_type=spec.model_type,
            options=options,
            model_sha256=file_sha256(model_file),
            model_size=model_file.stat().st_size,
            data_sha256=file_sha256(out / DATA_FILE),
            data_size=(out / DATA_FILE).stat().st_size,
            inputs=inputs,
            output=_output_name(spec),
            fused=fused,
            versions=_versions(),
            verify=verify,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_manifest(out, manifest)
    return manifest


def _output_name(spec: ModelSpec) -> str:
    return "embeddings" if spec.task is Task.EMBED else "logits"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and optimiser's deprecation and tracer chatter (none is actionable
    by a user); log it at debug instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        log.debug("prepare: %s: %s", item.category.__name__, item.message)


def _load_wrapper(spec: ModelSpec) -> tuple[torch.nn.Module, list[str]]:
    """The transformers model wrapped so that its output is what `Backend.run` returns:
    pooled (unnormalised) embeddings, or logits. Returns it and its input names."""
    import inspect

    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ember.backends.torch_backend import pool

    cls = AutoModel if spec.task is Task.EMBED else AutoModelForSequenceClassification
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

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(names, inputs, strict=True))
            out = self.model(**kwargs)
            if embed:
                return pool(out.last_hidden_state, kwargs["attention_mask"], method)
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
    output: str,
    path: Path,
    opset: int,
) -> None:
    import torch

    # Trace on two rows, one padded, so the mask is never constant-folded away.
    args = tuple(torch.from_numpy(feeds[name][:2].copy()) for name in names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic[output] = {0: "batch"}
    try:
        with _quiet(), torch.inference_mode():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise ModelError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc


def _fuse(spec: ModelSpec, source: Path, dest: Path) -> bool:
    """ORT's transformer fusions (Attention, EmbedLayerNorm, BiasGelu) for BERT-like encoders;
    False (keep the plain graph) for other architectures or on failure.

    Not SkipLayerNorm: ORT 1.32's CPU SkipLayerNormalization kernel takes 1.45 ms on 32x48x384
    where Add + Add + LayerNormalization take 0.5 ms, which made it 28 % of the int8 graph's
    time (onnx_notes.md). ORT's own SkipLayerNormFusion is disabled too (`create_session`).
    """
    if spec.model_type not in _BERT_LIKE:
        log.info("prepare: no transformer fusions for model type %r", spec.model_type)
        return False
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((spec.path / "config.json").read_text(encoding="utf-8"))
    heads = int(config.get("num_attention_heads", config.get("n_heads", 0)) or 0)
    hidden = int(config.get("hidden_size", config.get("dim", 0)) or 0)
    fusions = FusionOptions("bert")
    fusions.enable_skip_layer_norm = False
    fusions.enable_bias_skip_layer_norm = False
    try:
        with _quiet(), _ort_logs_quiet():
            model = optimize_model(
                str(source),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                opt_level=0,
                optimization_options=fusions,
            )
            model.save_model_to_file(str(dest))
    except Exception as exc:
        log.warning("prepare: transformer fusions failed (%s); keeping the plain graph", exc)
        return False
    return True


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _ort_logs_quiet() -> Iterator[None]:
    """Keep ORT's Python tools' log lines out of the CLI display while they run.

    They log to "onnxruntime.*" loggers and, for the quantiser's pre-processing hint, to the
    root logger directly, which also calls `basicConfig` when root has no handler; a NullHandler
    prevents that and a filter on root (it sees only records logged on root itself, not those
    propagated from ember's loggers) drops the hint.
    """
    logger = logging.getLogger("onnxruntime")
    root = logging.getLogger()
    level, drop, null = logger.level, _DropRecords(), logging.NullHandler()
    logger.setLevel(logging.ERROR)
    root.addFilter(drop)
    root.addHandler(null)
    try:
        yield
    finally:
        logger.setLevel(level)
        root.removeFilter(drop)
        root.removeHandler(null)


def _quantize(source: Path, dest: Path) -> None:
    """Dynamic int8: s8 weights per output channel, u8 activations quantised at run time.

    Per channel because per-tensor weights lose too much on MiniLM (median cosine to fp32 0.93
    vs 0.99 over the parity corpus, onnx_notes.md). MatMul and fused Attention only: the
    embedding Gather is a lookup, quantising it saves memory, not time.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(), _ort_logs_quiet():
        try:
            quantize_dynamic(
                str(source),
                str(dest),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                # ORT's shape inference cannot type the outputs of fused contrib ops; they are
                # all float here. (Its "pre-processing" fixes that too, at 5 s more.)
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise ModelError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


def _save_optimized(source: Path, dest: Path, level: int) -> None:
    """Apply ORT's graph optimisations once and save the result, so serving starts need not."""
    if level == 0:
        shutil.copyfile(source, dest)
        return
    from ember.backends.onnx_backend import create_session

    create_session(source, threads=1, level=level, save_to=dest)


def _externalize(source: Path, dest: Path) -> None:
    """Save the self-contained graph `source` as `dest` plus `DATA_FILE` beside it, each
    initializer of `DATA_MIN_BYTES` or more at a `DATA_ALIGNMENT` boundary of the data file."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(source))
    offset = 0
    with (dest.parent / DATA_FILE).open("wb") as data:
        for tensor in model.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < DATA_MIN_BYTES:
                continue
            offset += data.write(bytes(-offset % DATA_ALIGNMENT))
            set_external_data(tensor, location=DATA_FILE, offset=offset, length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += data.write(raw)
    onnx.save_model(model, str(dest))


def _verify(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray[Any, Any]],
    model: Path,
    *,
    options: Options,
    embed: bool,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Run the saved graph and the torch module on the sample batch; raise if they differ.

    Returns the agreement figures and the graph's input names (the exporter drops inputs the
    model ignores, so these, not the wrapper's, are what serving must feed)."""
    import torch

    from ember.backends.onnx_backend import create_session, serving_level

    with torch.inference_mode():
        expected = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    session = create_session(model, threads=1, level=serving_level(options.optimize))
    inputs = tuple(str(i.name) for i in session.get_inputs())
    got: FloatArray = session.run(None, {name: feeds[name] for name in inputs})[0]
    int8 = options.quantize == "int8"
    if not np.isfinite(got).all():
        raise ModelError(f"verification failed: {model} produced non-finite values")
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


def _versions() -> dict[str, str]:
    import onnx
    import torch
    import transformers

    return {
        "ember": __version__,
        "onnxruntime": _ort_version(),
        "onnx": str(onnx.__version__),
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
    }


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


@contextmanager
def _rich_steps() -> Iterator[StepFn]:
    """A spinner and elapsed time per stage on stderr (stdout carries only the path)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"))
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:

        @contextmanager
        def step(label: str) -> Iterator[None]:
            task = progress.add_task(label, total=1)
            try:
                yield
            except BaseException:
                progress.update(task, description=f"[red]{label} — failed")
                progress.stop_task(task)
                raise
            progress.update(task, completed=1)

        yield step


@contextmanager
def _plain_steps() -> Iterator[StepFn]:
    """Without rich (it comes with the bench extra): one line per finished stage."""

    @contextmanager
    def step(label: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        print(f"  {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)

    yield step


def _steps() -> AbstractContextManager[StepFn]:
    try:
        import rich  # noqa: F401
    except ImportError:
        return _plain_steps()
    return _rich_steps()


def prepare_main(
    settings: Settings, *, source: str, out: str | None, optimize: int | None, force: bool
) -> int:
    """`ember prepare`: export, fuse, quantise, optimise and verify; print the artifact path.

    Returns 0 on success (or when an up-to-date artifact is already there), 1 with a one-line
    error otherwise.
    """
    try:
        spec = inspect_model(source, pooling=settings.pooling)
        if spec.onnx_artifact:
            raise ModelError(f"{spec.path} is already a prepared artifact; serve it as it is")
        options = options_from(settings, optimize)
        if out is None:
            dest = cache_path(settings, spec, options)
        else:
            dest = Path(out).expanduser().resolve()
            _check_out(dest, spec, options, force=force)
        if is_artifact(dest) and not force:
            load_manifest(dest)
            print(f"ember: {spec.name} is already prepared", file=sys.stderr)
        else:
            with _steps() as step:
                prepare(spec, options, dest=dest, step=step, force=force)
    except EmberError as exc:
        print(f"ember: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ember: interrupted; nothing was written", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, not a traceback; the details go to the debug log
        log.debug("prepare failed", exc_info=True)
        print(f"ember: error: prepare failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(dest)
    return 0


def _check_out(dest: Path, spec: ModelSpec, options: Options, *, force: bool) -> None:
    """`--out` may name a new folder, or an artifact we may replace (`--force`) or reuse."""
    if not dest.exists():
        return
    if not is_artifact(dest):
        if not dest.is_dir() or any(dest.iterdir()):
            raise ModelError(f"{dest} exists and is not an ember artifact; choose another --out")
        dest.rmdir()  # an empty folder: the artifact takes its place
        return
    if force:
        return
    key = artifact_key(spec, options)
    if load_manifest(dest).key != key:
        raise ModelError(
            f"{dest} holds an artifact of another model or other options; add --force to replace it"
        )
