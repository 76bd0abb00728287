"""`ModelSpec`: what ember knows about a model before loading any weights, and its record in
a prepared artifact's manifest (`manifest.py` holds the spec as one nested record, so that an
artifact describes its model exactly as the source folder did: Dense modules, prompts...).

Imports only the standard library and ember's base modules (`models` inspects folders into a
spec, `manifest` stores one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.st_modules import SPLADE_POOLINGS, DenseLayer
from ember.tasks import Task

__all__ = ["ModelSpec"]


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

    def to_record(self) -> dict[str, Any]:
        """The spec as an artifact's manifest records it: all but where it was found (`source`,
        `path`, `onnx_artifact`), which belong to wherever the artifact is served from."""
        return {
            "name": self.name,
            "task": self.task.value,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "dimension": self.dimension,
            "labels": list(self.labels),
            "architecture": self.architecture,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "dense": [layer.to_dict() for layer in self.dense],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], *, path: Path) -> ModelSpec:
        """The spec `to_record` wrote, served from the artifact folder `path`. Raises
        ValueError (or TypeError) naming the first field of the wrong type."""
        get = _Fields(record)
        return cls(
            name=get("name", str),
            source=str(path),
            path=path,
            task=Task(get("task", str)),
            max_length=get("max_length", int),
            pooling=get("pooling", str),
            normalize=get("normalize", bool),
            dimension=get("dimension", int, optional=True),
            labels=tuple(str(label) for label in get("labels", list)),
            architecture=get("architecture", str),
            model_type=get("model_type", str),
            hidden_size=get("hidden_size", int),
            prompts={str(k): str(v) for k, v in get("prompts", dict).items()},
            default_prompt_name=get("default_prompt_name", str, optional=True),
            onnx_artifact=True,
            dense=tuple(DenseLayer.from_dict(d, root=path) for d in get("dense", list)),
        )


class _Fields:
    """Typed reads of a record's fields."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def __call__(self, name: str, kind: type[Any], *, optional: bool = False) -> Any:
        value = self.record.get(name)
        if value is None and optional:
            return None
        # bool is an int subclass: do not let `true` pass as a length.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"field {name!r} is not {kind.__name__}")
        return value
