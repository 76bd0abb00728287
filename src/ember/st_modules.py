"""The modules of a sentence-transformers folder (`modules.json`): pooling, Normalize, Dense and
SPLADE pooling, read from their JSON configs; what ember cannot reproduce exactly is refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import ModelError

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

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, root: Path) -> DenseLayer:
        """The layer `to_dict` wrote, its folder under `root`."""
        activation = str(data["activation"])
        if activation not in DENSE_ACTIVATIONS:
            raise ValueError(f"the Dense activation {activation!r} is not supported")
        return cls(
            folder=root / str(data["folder"]),
            in_features=int(data["in_features"]),
            out_features=int(data["out_features"]),
            bias=bool(data["bias"]),
            activation=activation,
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data


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
    cfg = read_json(folder / "config.json")
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


def sentence_transformers_layout(path: Path, *, dense_path: str | None = None) -> _Layout:
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
            cfg = read_json(path / module.get("path", "") / "config.json")
            pooling = _splade_pooling(path, cfg)
        elif kind.endswith("Pooling"):
            cfg = read_json(path / module.get("path", "") / "config.json")
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
