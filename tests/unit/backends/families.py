"""Tiny BERT-shaped models of each family the GPU fast path covers (BERT, RoBERTa, XLM-R,
DistilBERT) with every head, and transformers' fp32 reference on exactly the ids ember runs.

The folders reuse the built-in WordPiece tokenizer: what is under test is the encoder (weight
names, the position offset, token types, the heads), and feeding transformers the same id matrix
makes the comparison independent of any tokenizer. RoBERTa-style references get no token type
ids, as their own tokenizers give none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import Batch
from ember.bench import tiny_models
from ember.models import Task

FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert")
_CLASSES = {
    "bert": ("BertConfig", "BertModel", "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaModel", "RobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaForSequenceClassification"),
    "distilbert": ("DistilBertConfig", "DistilBertModel", "DistilBertForSequenceClassification"),
}


def _config(family: str, **extra: Any) -> Any:
    import transformers

    cls = getattr(transformers, _CLASSES[family][0])
    if family == "distilbert":
        sizes = {"dim": 32, "n_heads": 2, "hidden_dim": 64, "n_layers": 2}
        return cls(vocab_size=tiny_models.VOCAB_SIZE, initializer_range=0.2, **sizes, **extra)
    values: dict[str, Any] = {
        "vocab_size": tiny_models.VOCAB_SIZE,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "initializer_range": 0.2,
    }
    if family == "bert":
        values |= {"max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0}
    else:  # positions start at padding_idx + 1 = 2; one token type row
        values |= {"max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1}
        values |= {"layer_norm_eps": 1e-5}
    return cls(**values, **extra)


def build(root: Path, family: str, task: Task, *, pooling: str = "mean", seed: int = 5) -> Path:
    """A model folder of `family` for `task` under `root` (built once; later calls reuse it)."""
    import torch
    import transformers

    path = root / f"{family}-{task.value}-{pooling}"
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    _, base, head = _CLASSES[family]
    if task is Task.EMBED:
        model = getattr(transformers, base)(_config(family))
    else:
        labels = {0: "no", 1: "maybe", 2: "yes"} if task is Task.CLASSIFY else {0: "LABEL_0"}
        extra = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
        model = getattr(transformers, head)(_config(family, num_labels=len(labels), **extra))
    path.mkdir(parents=True)
    model.eval().save_pretrained(path)
    tiny_models.copy_tokenizer(path)
    if task is Task.EMBED:
        sentence_transformers_files(path, pooling)
    return path


def sentence_transformers_files(path: Path, pooling: str, *, width: int = 32) -> None:
    """modules.json, the Pooling module (`pooling`: cls, mean, max, lasttoken) and the length."""
    kinds = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": kinds[0]},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": kinds[1]},
    ]
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    config: dict[str, Any] = {f"pooling_mode_{m}": False for m in modes}
    key = {"cls": "cls_token", "lasttoken": "lasttoken"}.get(pooling, f"{pooling}_tokens")
    config |= {"word_embedding_dimension": width, f"pooling_mode_{key}": True}
    (path / "modules.json").write_text(json.dumps(modules), "utf-8")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config), "utf-8")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}), "utf-8")


def reference(path: Path, family: str, task: Task, batch: Batch, *, pooling: str) -> np.ndarray:
    """transformers' fp32 output on `batch`'s ids: pooled vectors (embed) or logits."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModel if task is Task.EMBED else AutoModelForSequenceClassification
    model = cls.from_pretrained(str(path), local_files_only=True).eval()
    mask = torch.from_numpy(batch.attention_mask)
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": mask}
    if family == "bert":
        inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids)
    with torch.inference_mode():
        out = model(**inputs)
    if task is not Task.EMBED:
        logits: np.ndarray = out.logits.float().numpy()
        return logits
    hidden = out.last_hidden_state.float()
    if pooling in ("cls", "lasttoken"):
        last = mask.sum(1) - 1 if pooling == "lasttoken" else torch.zeros_like(mask[:, 0])
        pooled: np.ndarray = hidden[torch.arange(len(hidden)), last].numpy()
        return pooled
    weights = mask[..., None].float()
    mean: np.ndarray = ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).numpy()
    return mean
