"""Tiny BERT models for tests and benchmarks: seeded random weights, a real config, the built-in
model's tokenizer (one model per family TEI serves: `tiny_families`).

Every builder writes a complete model folder that transformers, sentence-transformers and ember
can all load offline, each in well under a second once torch is imported. Weights are drawn
wider than BERT's default so that scores differ visibly between inputs: parity and ordering checks
on near-identical scores would prove nothing. The references at the end are what transformers and
sentence-transformers compute on the same folders.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.models import builtin_path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
"""Copied from the built-in all-MiniLM-L6-v2: a real uncased WordPiece tokenizer."""

VOCAB_SIZE = 30522
"""The built-in tokenizer's vocabulary."""

HIDDEN = 32

CLASSIFY_LABELS = {0: "negative", 1: "neutral", 2: "positive"}

MAX_SEQ_LENGTH = 128
"""`max_seq_length` of the embedding model's sentence-transformers config."""


def tiny_config(**overrides: Any) -> Any:
    """A small but real BERT config (what `from_pretrained` reads back)."""
    from transformers import BertConfig

    values: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "pad_token_id": 0,
        # Ten times BERT's 0.02: with the default, every input gets nearly the same score.
        "initializer_range": 0.2,
    }
    values.update(overrides)
    return BertConfig(**values)


def copy_tokenizer(path: Path) -> None:
    source = builtin_path()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, path / name)


def _sequence_classifier(
    path: Path, *, seed: int, num_labels: int, logit_shift: float = 0.0, **config: Any
) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(num_labels=num_labels, **config))
    with torch.no_grad():
        model.classifier.bias.add_(logit_shift)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    return path


def build_reranker(path: Path, *, seed: int = 0, logit_shift: float = 0.0) -> Path:
    """A plain transformers reranker: BertForSequenceClassification with one label; `logit_shift`
    moves every score (far negative: a sigmoid that underflows)."""
    return _sequence_classifier(path, seed=seed, num_labels=1, logit_shift=logit_shift)


def build_classifier(path: Path, *, seed: int = 1) -> Path:
    """A three-way sentiment classifier with named labels."""
    return _sequence_classifier(
        path,
        seed=seed,
        num_labels=len(CLASSIFY_LABELS),
        id2label=dict(CLASSIFY_LABELS),
        label2id={v: k for k, v in CLASSIFY_LABELS.items()},
    )


def build_cross_encoder(path: Path, *, source: Path) -> Path:
    """The reranker at `source` saved again by `sentence_transformers.CrossEncoder`, so the
    folder has the layout CrossEncoder writes (config_sentence_transformers.json, modules.json)."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(source), device="cpu", local_files_only=True)
    model.save(str(path))
    return path


def build_embedder(path: Path, *, seed: int = 2) -> Path:
    """A sentence-transformers embedding model: BertModel → mean pooling → Normalize."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(tiny_config())
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    pooling = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    _write_json(path / "modules.json", modules)
    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", pooling)
    (path / "2_Normalize").mkdir(exist_ok=True)
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH})
    return path


def resave_embedder(path: Path, *, source: Path, pooling: str) -> Path:
    """The embedder at `source` with another pooling mode, saved by sentence-transformers itself,
    so the folder has the file formats the installed version writes (6.x: `pooling_mode`)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    (pool,) = (m for m in model if isinstance(m, Pooling))
    pool.pooling_mode = pooling
    model.save(str(path))
    return path


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


# --- references: what transformers and sentence-transformers compute on the same weights -------

Floats = npt.NDArray[np.float32]


@cache
def _sequence_classification(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
    return tokenizer, model.eval()


def reference_logits(
    path: Path, firsts: list[str], seconds: list[str] | None = None, *, max_length: int
) -> Floats:
    """transformers' logits for texts (or pairs), truncated at `max_length` (longest first, as
    the server truncates pairs)."""
    import torch

    tokenizer, model = _sequence_classification(path)
    encoded = tokenizer(
        firsts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        logits: Floats = model(**encoded).logits.float().numpy()
    return logits


def reference_embeddings(
    path: Path, texts: list[str], *, max_length: int, prompt_name: str | None = None
) -> Floats:
    """sentence-transformers' embeddings (the folder's own pooling, Normalize and prompts)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    model.max_seq_length = max_length
    vectors: Floats = model.encode(texts, convert_to_numpy=True, prompt_name=prompt_name)
    return vectors


def sigmoid(x: Floats) -> Floats:
    # Python floats would widen the annotation to float64; the values stay float32.
    out: Floats = (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)
    return out


def softmax(x: Floats) -> Floats:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: Floats = e / e.sum(axis=1, keepdims=True)
    return out
