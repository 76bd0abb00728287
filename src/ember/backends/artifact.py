"""Prepared ONNX artifacts: `ember prepare` builds them, the ONNX backend serves them.

An artifact is a folder holding `model.onnx` (exported with pooling in the graph, fused,
optionally int8, optimised once) with its weights in `model.onnx.data` (ONNX external data,
which ONNX Runtime memory-maps), the tokenizer files and the manifest (`ember/manifest.py`).
Artifacts are written to a temporary sibling and renamed into place, so a killed prepare never
leaves half of one; a damaged one raises `ModelError` naming the file.

This module is the orchestration: options from settings, cache keys, finding or preparing an
artifact under the cache lock, and `ember prepare`'s command line; it imports only the standard
library and ember. Building an artifact (export, fuse, quantise, optimise, verify) is
`backends/export.py`, imported only when one is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ember import __version__
from ember.backends.cache_lock import cache_lock
from ember.backends.disk_space import (
    bytes_needed,
    check_space,
    free_bytes,
    ran_out_of_space,
    space_message,
)
from ember.errors import EmberError, ModelError
from ember.manifest import (
    DEFAULT_OPTIMIZE,
    FORMAT_VERSION,
    MODEL_FILE,
    OPTIMIZE_LEVELS,
    Manifest,
    Options,
    folder_digest,
    is_artifact,
    load_manifest,
    ort_version,
)
from ember.models import ModelSpec, Task, inspect_model
from ember.settings import Settings

if TYPE_CHECKING:
    from ember.backends.export import StepFn

__all__ = ["MODEL_FILE", "Manifest", "Options", "ensure_artifact", "prepare", "prepare_main"]

log = logging.getLogger("ember.backends.artifact")


# --- options and keys ----------------------------------------------------------------------


def options_from(settings: Settings, optimize: int | None = None) -> Options:
    return Options(
        quantize=settings.quantize, optimize=DEFAULT_OPTIMIZE if optimize is None else optimize
    )


def artifact_key(spec: ModelSpec, options: Options) -> str:
    """The cache key: source identity, what shapes the graph (task, pooling, options), versions."""
    parts = {
        "format": FORMAT_VERSION,
        "ember": __version__,
        "onnxruntime": ort_version(),
        "source": folder_digest(spec.path, content=False),
        "task": spec.task.value,
        "pooling": spec.pooling if spec.task is Task.EMBED else None,
        "options": options.to_dict(),
    }
    if spec.dense:  # only then, so that other models keep their cached artifacts
        parts["dense"] = [layer.folder.name for layer in spec.dense]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(settings: Settings, spec: ModelSpec, options: Options) -> Path:
    """Where the artifact for `spec` with `options` lives in the cache."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", spec.name).strip("-.") or "model"
    # Absolute: a fusion pass changes the working folder while it runs (graph_passes).
    cache = settings.cache_dir.expanduser().absolute()
    return cache / "onnx" / f"{slug}-{artifact_key(spec, options)}"


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
    manifest = prepare(
        spec, options, dest=dest, step=step, lock_timeout=settings.prepare_lock_timeout
    )
    return dest, manifest


def _uncapped(spec: ModelSpec) -> ModelSpec:
    """The spec at the model's own max length: the artifact must not bake in a serving cap."""
    full = inspect_model(str(spec.path), name=spec.name, pooling=spec.pooling)
    return replace(spec, max_length=full.max_length)


def prepare(
    spec: ModelSpec,
    options: Options,
    *,
    dest: Path,
    step: StepFn,
    force: bool = False,
    lock_timeout: float = 0.0,
) -> Manifest:
    """Build the artifact for `spec` at `dest`, atomically; returns its manifest.

    Under a lock per destination (replicas may share a cache volume), waited for at most
    `lock_timeout` seconds (0: no bound): a prepare that finds `dest` already built (by another
    process) uses it unless `force`. Leftovers of killed prepares are removed first.
    """
    if options.optimize not in OPTIMIZE_LEVELS:
        raise ModelError(f"--optimize must be one of {OPTIMIZE_LEVELS}, not {options.optimize}")
    if options.quantize not in ("none", "int8"):
        raise ModelError(f"--quantize must be none or int8, not {options.quantize!r}")
    lock = dest.parent / f".{dest.name}.lock"
    with cache_lock(lock, what=spec.name, timeout=lock_timeout):
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if is_artifact(dest) and not force:
            return load_manifest(dest)
        needed = bytes_needed(spec.path)
        check_space(dest.parent, needed)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            from ember.backends.export import build

            full = _uncapped(spec)
            manifest = build(full, options, key=artifact_key(full, options), out=tmp, step=step)
            _replace_dir(tmp, dest)
        except BaseException as exc:
            free = free_bytes(dest.parent)  # before the cleanup frees what was written
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, Exception) and ran_out_of_space(exc, free):
                message = space_message(folder=dest.parent, needed=needed, free=free)
                raise ModelError(f"ran out of disk space: {message}") from exc
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
    progress = Progress(*columns, TimeElapsedColumn(), console=console)

    @contextmanager
    def step(label: str) -> Iterator[None]:
        # Started at the first stage: a prepare refused before any work (disk space, lock
        # timeout) prints only its one error line.
        if not progress.live.is_started:
            progress.start()
        task = progress.add_task(label, total=1)
        try:
            yield
        except BaseException:
            progress.update(task, description=f"[red]{label} — failed")
            progress.stop_task(task)
            raise
        progress.update(task, completed=1)

    try:
        yield step
    finally:
        if progress.live.is_started:
            progress.stop()


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
        spec = inspect_model(source, pooling=settings.pooling, dense_path=settings.dense_path)
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
                manifest = prepare(
                    spec,
                    options,
                    dest=dest,
                    step=step,
                    force=force,
                    lock_timeout=settings.prepare_lock_timeout,
                )
            if manifest.fusion is not None and options.optimize > 0:
                # Said, never swallowed: a failed fusion leaves a slower graph that still serves.
                print(
                    f"ember: {manifest.fusion.summary(manifest.spec.model_type)}", file=sys.stderr
                )
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
