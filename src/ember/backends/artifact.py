"""Prepared ONNX artifacts: `ember prepare` builds them, the ONNX backend serves them.

An artifact is a folder holding `model.onnx` (exported with pooling in the graph, fused,
optionally int8, optimised once) with its weights in `model.onnx.data` (ONNX external data,
which ONNX Runtime memory-maps), the tokenizer files and `ember-manifest.json`, which records
everything serving needs (task, pooling, limits, labels, prompts) so that serving an artifact
reads no other file. Artifacts are written to a temporary sibling and renamed into place, so a
killed prepare never leaves half of one; a damaged one raises `ModelError` naming the file.

This module is the serving side and the orchestration: options, cache keys, the manifest, damage
checks, the cache lock and `ember prepare`'s command line; it imports only the standard library
and ember. Building an artifact (export, fuse, quantise, optimise, verify) is
`backends/export.py`, imported only when one is built.
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ember import __version__
from ember.errors import EmberError, ModelError
from ember.models import ModelSpec, Task, inspect_model
from ember.settings import Quantize, Settings

log = logging.getLogger("ember.backends.artifact")

MANIFEST_NAME = "ember-manifest.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
"""The graph's initializers as ONNX external data. ONNX Runtime maps the file instead of copying
it into the heap, so the pages that serving never reads (most rows of the word-embedding
table: 45 MiB of all-MiniLM-L6-v2's 86 MB) stay out of RSS (onnx_notes.md)."""
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


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def artifact_key(spec: ModelSpec, options: Options) -> str:
    """The cache key: source identity, what shapes the graph (task, pooling, options), versions."""
    parts = {
        "format": FORMAT_VERSION,
        "ember": __version__,
        "onnxruntime": ort_version(),
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
            from ember.backends.export import build

            manifest = build(_uncapped(spec), options, out=tmp, step=step)
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
