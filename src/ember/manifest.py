"""The artifact manifest: what `ember prepare` records about a prepared folder, read back.

An artifact is a folder holding `model.onnx` with its weights in `model.onnx.data`, the tokenizer
files and `ember-manifest.json`, which records everything serving needs (task, pooling, limits,
labels, prompts) so that serving an artifact reads no other file. This module reads and checks
manifests and fingerprints model folders; it imports only the standard library and ember's base
modules, so that `models` (inspection) and `backends` (building, serving) can both use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import ModelError
from ember.settings import Quantize
from ember.spec import ModelSpec

MANIFEST_NAME = "ember-manifest.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
"""The graph's initializers as ONNX external data. ONNX Runtime maps the file instead of copying
it into the heap, so the pages that serving never reads (most rows of the word-embedding
table: 45 MiB of all-MiniLM-L6-v2's 86 MB) stay out of RSS (onnx_notes.md)."""
TOKEN_OUTPUT = "last_hidden_state"
"""The graph's second output on embedding models: the encoder's last hidden state (batch,
sequence, hidden), for TEI's `/embed_all`. ORT computes only the outputs a run asks for."""
FORMAT_VERSION = 3
"""Part of the cache key, so that a new layout or graph recipe prepares again (an artifact of
another format is refused by name: prepare it again). 3: the `model` section is the whole
`ModelSpec` record (Dense modules, the default prompt). 2: weights in `DATA_FILE`, residual
Add + LayerNormalization instead of SkipLayerNormalization (1: weights inside model.onnx,
SkipLayerNormalization)."""
OPSET = 17
"""ONNX opset of the export: 17 has LayerNormalization, which ORT's fusions expect."""
DEFAULT_OPTIMIZE = 2
"""ORT level baked into the saved graph: 2 (extended) is the highest level whose output is not
tied to the preparing machine's CPU (99 adds layout transforms ORT marks hardware-specific)."""
OPTIMIZE_LEVELS = (0, 1, 2, 99)


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


@dataclass(frozen=True, kw_only=True)
class Fusion:
    """What the fusion pass did, recorded in the manifest and shown by `/info`."""

    fused: bool
    """The artifact's graph is the fused one."""
    model_type: str | None = None
    """The ORT optimiser model type used; None when the family has none."""
    ops: dict[str, int] = field(default_factory=dict)
    """Fused operators ORT counted (e.g. Attention: 6); only those that occurred."""
    error: str | None = None
    """Why fusion failed (the unfused graph is then served), or None."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fused": self.fused,
            "model_type": self.model_type,
            "ops": dict(self.ops),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fusion:
        kind, error = data.get("model_type"), data.get("error")
        return cls(
            fused=bool(data.get("fused", False)),
            model_type=None if kind is None else str(kind),
            ops={str(k): int(v) for k, v in (data.get("ops") or {}).items()},
            error=None if error is None else str(error),
        )

    def summary(self, model_type: str) -> str:
        """One line for `ember prepare`'s output."""
        if self.error is not None:
            return f"warning: transformer fusions failed, serving the unfused graph: {self.error}"
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items()))
        if self.fused and self.model_type is None:  # the graph builder writes the fused form
            return f"transformer fusions (written fused from the weights): {ops}"
        if self.model_type is None:
            return f"no transformer fusions: onnxruntime has none for model type {model_type!r}"
        if not self.fused:
            return f"transformer fusions ({self.model_type}) matched nothing in this graph"
        return f"transformer fusions ({self.model_type}): {ops}"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The contents of `ember-manifest.json`."""

    key: str
    spec: ModelSpec
    """The model as it was inspected (served from the artifact: its `path` is the artifact's)."""
    source_path: str
    source_digest: str
    options: Options
    model_sha256: str
    model_size: int
    data_sha256: str
    data_size: int
    inputs: tuple[str, ...]
    output: str
    fused: bool
    fusion: Fusion | None = None
    """What the fusion pass did; None in artifacts prepared before it was recorded."""
    versions: dict[str, str] = field(default_factory=dict)
    verify: dict[str, float] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "created": self.created,
            "source": {"path": self.source_path, "digest": self.source_digest},
            "model": self.spec.to_record(),
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
            "optimization": None if self.fusion is None else self.fusion.to_dict(),
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
    inputs = graph.get("inputs", list)
    if graph.get("file", str) != MODEL_FILE or not inputs:
        raise graph.bad("file")
    weights = graph.section("data")
    if weights.get("file", str) != DATA_FILE:
        raise weights.bad("file")
    return Manifest(
        key=root.get("key", str),
        created=str(data.get("created", "")),
        spec=ModelSpec.from_record(model.data, path=file.parent),
        source_path=source.get("path", str),
        source_digest=source.get("digest", str),
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
        fusion=_fusion(root),
        versions={str(k): str(v) for k, v in versions.data.items()},
        verify={str(k): float(v) for k, v in root.section("verify").data.items()},
    )


def _fusion(root: _Reader) -> Fusion | None:
    if root.data.get("optimization") is None:
        return None
    return Fusion.from_dict(root.section("optimization").data)


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


def ort_version() -> str:
    """The onnxruntime version, part of every artifact's key (a new ORT prepares again)."""
    import onnxruntime

    return str(onnxruntime.__version__)


# --- folder fingerprints -----------------------------------------------------------------------


def _model_files(path: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, file) for the files of a model folder that shape its weights or config,
    sorted; hidden files and docs (`*.md`) are left out so that editing a README prepares
    nothing again."""
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if not (rel.startswith(".") or rel.endswith(".md")):
            yield rel, file


def folder_digest(path: Path, *, content: bool = True) -> str:
    """A sha256 over a model folder's files: names, sizes and bytes; with `content=False`
    names, sizes and mtimes only (stat, no reads: cheap enough for every start's cache key)."""
    digest = hashlib.sha256()
    for rel, file in _model_files(path):
        stat = file.stat()
        if not content:
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            continue
        digest.update(rel.encode())
        digest.update(str(stat.st_size).encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
