"""The family models themselves: real tokenizers of each family, configs ember reads right,
weights wide enough to matter, and the torch backend's attention choice per family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ember.backends.torch_backend import attention_implementation
from ember.bench.tiny_families import (
    E5_PROMPTS,
    FAMILIES,
    FAMILY_MAX_LENGTH,
    family_config,
    reference_sparse,
)
from ember.bench.tiny_models import reference_embeddings
from ember.errors import ModelError
from ember.models import Task, inspect_model

TEXTS = [
    "hello",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, Zürich 2026!",
]
PAIRS = [("what is it?", "a thing that fits"), ("hello", "world")]

TOKENIZER_CLASS = {
    "bert": "BertTokenizer",
    "distilbert": "DistilBertTokenizer",
    "mpnet": "MPNetTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
    "roberta": "RobertaTokenizer",
    "qwen3": "Qwen2Tokenizer",
    # ModernBERT ships no tokenizer class of its own: a generic fast tokenizer.
    "modernbert": "TokenizersBackend",
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tokenizer_json_encodes_as_the_family_tokenizer(
    tiny_families: dict[str, Path], name: str
) -> None:
    # ember reads tokenizer.json with `tokenizers`; the reference uses transformers' class.
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = tiny_families[name]
    ours = Tokenizer.from_file(str(path / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    assert type(theirs).__name__ == TOKENIZER_CLASS[FAMILIES[name].model_type]
    for text in TEXTS:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    for first, second in PAIRS:
        enc = theirs(first, second)
        assert ours.encode(first, second).ids == enc["input_ids"]
        if "token_type_ids" in enc:
            assert ours.encode(first, second).type_ids == enc["token_type_ids"]
    # A pair carries special tokens between and around its halves (what warm-up must plan for).
    assert len(ours.encode("a", "b").ids) >= 3 or FAMILIES[name].model_type == "qwen3"


UNSUPPORTED = {"bert-dense": "Dense modules", "splade": "SPLADE"}
"""Families ember refuses today (issue 13), and the words its refusal names them by."""


@pytest.mark.parametrize("name", list(FAMILIES))
def test_ember_reads_each_family(tiny_families: dict[str, Path], name: str) -> None:
    family = FAMILIES[name]
    if name in UNSUPPORTED:
        # Refused with a reason, never served as something else (SPLADE read as a mean-pooled
        # embedder was the silent failure).
        with pytest.raises(ModelError, match=UNSUPPORTED[name]):
            inspect_model(str(tiny_families[name]))
        return
    spec = inspect_model(str(tiny_families[name]))
    assert spec.task is Task(family.task)
    assert spec.model_type == family.model_type
    assert spec.max_length == FAMILY_MAX_LENGTH
    if spec.task is Task.EMBED:
        assert spec.pooling == family.pooling
        assert spec.normalize is family.normalize
        # sentence-transformers 6 adds empty `query` and `document` prompts to every folder.
        assert {k: v for k, v in spec.prompts.items() if v} == {
            k: v for k, v in family.prompts.items() if v
        }
    elif spec.task is Task.CLASSIFY:
        assert spec.labels == ("negative", "neutral", "positive")
    else:
        assert len(spec.labels) == 1


def test_the_prompts_model_is_e5_style(tiny_families: dict[str, Path]) -> None:
    prompts = inspect_model(str(tiny_families["e5-prompts"])).prompts
    assert {k: prompts[k] for k in E5_PROMPTS} == E5_PROMPTS


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.task == "embed"])
def test_different_texts_give_clearly_different_vectors(
    tiny_families: dict[str, Path], name: str
) -> None:
    # At BERT's init std (0.02) a random model maps every text to nearly one vector, and a
    # cosine >= 0.9999 check would pass for a server that ignores its input.
    vectors = reference_embeddings(tiny_families[name], TEXTS, max_length=FAMILY_MAX_LENGTH)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert cos[~np.eye(len(TEXTS), dtype=bool)].max() < 0.98, cos


def test_splade_vectors_are_sparse_over_the_vocabulary(tiny_families: dict[str, Path]) -> None:
    path = tiny_families["splade"]
    vectors = reference_sparse(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
    config = json.loads((path / "config.json").read_text())
    assert vectors.shape[1] == config["vocab_size"]  # one column per token id
    assert ((vectors > 0).sum(axis=1) < vectors.shape[1]).all()
    assert (vectors >= 0).all()


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("bert", "sdpa"),
        ("xlm-roberta", "sdpa"),
        ("distilbert", "sdpa"),
        ("modernbert", "sdpa"),
        ("qwen3", "sdpa"),
        ("mpnet", "eager"),
        ("deberta-v2", "eager"),
    ],
)
def test_attention_is_sdpa_where_the_family_supports_it(model_type: str, expected: str) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    config = family_config(model_type, vocab_size=100, pad_token_id=0)
    assert attention_implementation(AutoModel, config) == expected
    if model_type != "qwen3":
        assert attention_implementation(AutoModelForSequenceClassification, config) == expected
