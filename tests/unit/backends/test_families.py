"""The family models themselves: real tokenizers of each family, configs ember reads right,
weights wide enough to matter, and the torch backend's attention choice per family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ember.backends.base import Batch, output_width
from ember.backends.torch_backend import TorchBackend, attention_implementation
from ember.bench.tiny_families import (
    E5_PROMPTS,
    FAMILIES,
    FAMILY_MAX_LENGTH,
    family_config,
    reference_sparse,
)
from ember.bench.tiny_models import reference_embeddings
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


@pytest.mark.parametrize("name", list(FAMILIES))
def test_ember_reads_each_family(tiny_families: dict[str, Path], name: str) -> None:
    family = FAMILIES[name]
    spec = inspect_model(str(tiny_families[name]))
    assert spec.model_type == family.model_type
    assert spec.max_length == FAMILY_MAX_LENGTH
    if family.task == "sparse":
        # Never read as a mean-pooled embedder (the silent failure SPLADE once was).
        config = json.loads((tiny_families[name] / "config.json").read_text())
        assert (spec.task, spec.pooling, spec.splade) == (Task.EMBED, "splade-max", True)
        assert spec.dimension == output_width(spec) == config["vocab_size"]
        return
    assert spec.task is Task(family.task)
    if family.dense:
        (layer,) = spec.dense
        assert (layer.in_features, layer.out_features) == (spec.hidden_size, family.dense)
        assert (layer.activation, layer.bias, layer.folder.name) == ("Tanh", True, "2_Dense")
        assert spec.dimension == output_width(spec) == family.dense
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


def _batch(path: Path, texts: list[str]) -> Batch:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(FAMILY_MAX_LENGTH)
    tok.enable_padding()
    encs = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encs], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
    return Batch(
        input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids), real_rows=len(texts)
    )


def test_torch_backend_applies_the_dense_module(tiny_families: dict[str, Path]) -> None:
    path = tiny_families["bert-dense"]
    spec = inspect_model(str(path))
    backend = TorchBackend(spec=spec, device="cpu", threads=1)
    got = backend.run(_batch(path, TEXTS))
    expected = reference_embeddings(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
    assert got.shape == expected.shape == (len(TEXTS), FAMILIES["bert-dense"].dense)
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert ((unit * expected).sum(axis=1) >= 0.9999).all()


def test_torch_backend_pools_splade_like_sparse_encoder(tiny_families: dict[str, Path]) -> None:
    path = tiny_families["splade"]
    backend = TorchBackend(spec=inspect_model(str(path)), device="cpu", threads=1)
    got = backend.run(_batch(path, TEXTS))
    expected = reference_sparse(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert ((got > 0) == (expected > 0)).all()
