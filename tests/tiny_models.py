"""Tiny BERT models for tests: seeded random weights, a real config, the built-in tokenizer.

Every builder writes a complete model folder that transformers, sentence-transformers and ember
can all load offline, in well under a second. The heads are initialised wider than BERT's
default (std 0.02) so that scores differ visibly between inputs: parity checks and ordering
checks on near-identical scores would prove nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ember.models import builtin_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
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
    }
    values.update(overrides)
    return BertConfig(**values)


def copy_tokenizer(path: Path) -> None:
    source = builtin_path()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, path / name)


def _widen_head(model: Any, seed: int) -> None:
    """Re-draw the pooler and classifier with std 1/sqrt(hidden), so logits spread over ±2."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    std = HIDDEN**-0.5
    with torch.no_grad():
        for layer in (model.bert.pooler.dense, model.classifier):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std * 2)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)


def _sequence_classifier(path: Path, *, seed: int, num_labels: int, **config: Any) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(num_labels=num_labels, **config)).eval()
    _widen_head(model, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    return path


def build_reranker(path: Path, *, seed: int = 0) -> Path:
    """A plain transformers reranker: BertForSequenceClassification with one label."""
    return _sequence_classifier(path, seed=seed, num_labels=1)


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
    model = BertModel(tiny_config(), add_pooling_layer=False).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
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


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
