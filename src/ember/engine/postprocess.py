"""Per-task post-processing, as pure functions: prompts in, backend rows out to scores.

Every array returned is float32 and C-contiguous: orjson serialises only contiguous arrays (a
column slice such as `rows[:, :dimensions]` answered 500 before).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.backends.base import FloatArray
from ember.errors import InvalidInput


def _out(rows: npt.NDArray[np.floating[Any]]) -> FloatArray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def with_prompt(texts: list[str], *, prompts: Mapping[str, str], name: str | None) -> list[str]:
    """`texts` with the named prompt prepended (sentence-transformers' `prompt_name`)."""
    if name is None:
        return list(texts)
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise InvalidInput(f"unknown prompt_name {name!r}; this model has: {known}")
    prefix = prompts[name]
    return [prefix + text for text in texts]


def check_dimensions(dimensions: int | None, width: int) -> None:
    """422 unless `dimensions` (Matryoshka truncation) is between 1 and the model's width."""
    if dimensions is not None and not 1 <= dimensions <= width:
        raise InvalidInput(f"dimensions must be between 1 and {width} for this model")


def embeddings(rows: FloatArray, *, dimensions: int | None, normalize: bool) -> FloatArray:
    """Pooled rows cut to their first `dimensions` columns, then L2-normalised if asked (the
    cut comes first, as sentence-transformers' `truncate_dim` does)."""
    vectors = rows[:, :dimensions] if dimensions is not None else rows
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return _out(vectors)


def sigmoid(logits: FloatArray) -> FloatArray:
    """1 / (1 + e^-x); a logit below about -88 (float32 overflow of e^-x) scores exactly 0."""
    with np.errstate(over="ignore"):
        return _out(1.0 / (1.0 + np.exp(-logits.astype(np.float32))))


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, shifted by the row maximum so that no exponent overflows."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return _out(shifted / shifted.sum(axis=1, keepdims=True))


def rerank_scores(rows: FloatArray, *, raw: bool) -> FloatArray:
    """One score per pair (rows, 1): the first logit, or its sigmoid."""
    logits = rows[:, :1]
    return _out(logits) if raw else sigmoid(logits)


def class_scores(rows: FloatArray, *, raw: bool) -> FloatArray:
    """One score per label (rows, labels): the logits, or their softmax."""
    return _out(rows) if raw else softmax(rows)
