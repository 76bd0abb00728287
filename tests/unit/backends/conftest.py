"""Prepared artifacts shared by the backend tests: each model is exported once a session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.backends.artifact import ensure_artifact
from ember.bench import tiny_models
from ember.models import ModelSpec, inspect_model
from ember.settings import Settings
from tests.corpus import PARITY_TEXTS


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ember-cache")


@pytest.fixture(scope="session")
def settings(cache_dir: Path) -> Settings:
    return Settings(cache_dir=cache_dir, threads=1)


@pytest.fixture(scope="session")
def builtin_artifact(settings: Settings) -> Path:
    """The built-in all-MiniLM-L6-v2, prepared (fp32) into the session's cache: ~10 s."""
    artifact, _ = ensure_artifact(inspect_model("builtin"), settings)
    return artifact


@pytest.fixture(scope="session")
def tiny_plain(tiny_dir: Path) -> Path:
    """A plain transformers BertModel folder (no sentence-transformers files): pooling comes
    from the settings."""
    import torch
    from transformers import BertModel

    path = tiny_dir / "plain"
    torch.manual_seed(3)
    BertModel(tiny_models.tiny_config()).save_pretrained(path)
    tiny_models.copy_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_artifact(tiny_plain: Path, settings: Settings) -> Path:
    """The plain tiny model prepared with mean pooling: cheap to copy and damage."""
    artifact, _ = ensure_artifact(inspect_model(str(tiny_plain)), settings)
    return artifact


@pytest.fixture(scope="session")
def builtin() -> ModelSpec:
    return inspect_model("builtin")


@pytest.fixture(scope="session")
def reference(builtin: ModelSpec) -> np.ndarray:
    """sentence-transformers' own fp32 vectors for the parity corpus (unnormalised)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(builtin.path), device="cpu", local_files_only=True)
    vectors: np.ndarray = model.encode(
        PARITY_TEXTS, normalize_embeddings=False, convert_to_numpy=True
    )
    return vectors


@pytest.fixture(scope="session")
def tiny(tiny_reranker: Path, tiny_classifier: Path, tiny_embedder: Path) -> dict[str, Path]:
    """The tiny task models by kind, for tests parametrised over them."""
    return {"reranker": tiny_reranker, "classifier": tiny_classifier, "embedder": tiny_embedder}
