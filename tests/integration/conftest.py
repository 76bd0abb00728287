"""Tiny real models (seeded random weights, real config and tokenizer), built once a session,
and readers that put route answers back in input order for comparison with references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.bench import tiny_models
from ember.bench.tiny_models import CLASSIFY_LABELS, Floats

TOL = 1e-4
"""Most absolute difference from the reference, fp32."""
MAX_LENGTH = 128
"""The `max_input_length` tests serve with (tests/conftest.py FAST); references truncate alike."""
QUERY = "what is a fast embedding server?"


def by_index(ranked: list[dict[str, Any]], key: str = "score") -> Floats:
    """Ranked results (best first) back in input order."""
    scores = np.zeros(len(ranked), dtype=np.float32)
    for item in ranked:
        scores[item["index"]] = item[key]
    return scores


def by_label(predictions: list[dict[str, Any]]) -> Floats:
    """A prediction list (sorted by score) back in label order."""
    scores = {p["label"]: p["score"] for p in predictions}
    return np.array([scores[label] for label in CLASSIFY_LABELS.values()], dtype=np.float32)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_dir: Path, tiny_reranker: Path) -> Path:
    return tiny_models.build_cross_encoder(tiny_dir / "cross-encoder", source=tiny_reranker)


@pytest.fixture(scope="session")
def tiny_cls_embedder(tiny_dir: Path, tiny_embedder: Path) -> Path:
    """The embedder with CLS pooling, saved by the installed sentence-transformers."""
    return tiny_models.resave_embedder(
        tiny_dir / "cls-embedder", source=tiny_embedder, pooling="cls"
    )
