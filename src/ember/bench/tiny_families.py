"""Tiny models of every family TEI serves, for the model-family matrix (tests/e2e/test_families).

`build_family` writes one folder per row of `FAMILIES`: BERT (CLS, mean, Dense, prompts), XLM-R,
RoBERTa, DistilBERT, MPNet, ModernBERT, DeBERTa-v2, Qwen3 (last token, instruction prompt), SPLADE,
cross-encoders and classifiers. Hidden 64, 2 layers, seeded wide weights; each tokenizer is the
family's own transformers class, built offline from a small vocabulary (WordPiece, SentencePiece
Unigram or byte-level BPE, as the family uses), so that ember's `tokenizers` path and the
reference's transformers path read the same files.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ember.bench.tiny_models import CLASSIFY_LABELS, Floats
from ember.models import builtin_path

FAMILY_HIDDEN = 64
FAMILY_MAX_LENGTH = 32
"""Every family model's max length (sentence-transformers `max_seq_length` or the tokenizer's
`model_max_length`): small, so that truncation is cheap to exercise and warm-up has few shapes."""
FAMILY_POSITIONS = 64
FAMILY_STD = 0.3
"""Weight init std (`initializer_range`): 15x the usual 0.02, so different texts give clearly
different vectors; at 0.02 every input of a random model lands on nearly the same vector."""

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
QWEN_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the "
    "query\nQuery:",
    "document": "",
}


@dataclass(frozen=True, kw_only=True)
class Family:
    """One row of the matrix: a model type, its task head and its sentence-transformers layout."""

    name: str
    model_type: str
    task: str
    """`embed`, `rerank` or `classify`."""
    pooling: str = ""
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    layout: str = "sentence-transformers"
    """`sentence-transformers` (modules.json), `cross-encoder` (CrossEncoder.save),
    `sparse-encoder` (SparseEncoder.save) or `transformers` (a plain `save_pretrained` folder)."""
    dense: int = 0
    """Out features of a `2_Dense` module (Linear + tanh) after pooling; 0: none."""
    seed: int = 0


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(name="bert-cls", model_type="bert", task="embed", pooling="cls", normalize=True),
        Family(name="bert-mean", model_type="bert", task="embed", pooling="mean", seed=1),
        Family(name="xlm-roberta-cls", model_type="xlm-roberta", task="embed", pooling="cls"),
        Family(name="roberta-mean", model_type="roberta", task="embed", pooling="mean"),
        Family(name="distilbert", model_type="distilbert", task="embed", pooling="mean"),
        Family(name="mpnet", model_type="mpnet", task="embed", pooling="mean", normalize=True),
        Family(name="modernbert", model_type="modernbert", task="embed", pooling="mean"),
        Family(name="deberta-v2", model_type="deberta-v2", task="embed", pooling="mean"),
        Family(
            name="qwen3",
            model_type="qwen3",
            task="embed",
            pooling="lasttoken",
            normalize=True,
            prompts=QWEN_PROMPTS,
        ),
        Family(
            name="e5-prompts",
            model_type="bert",
            task="embed",
            pooling="mean",
            normalize=True,
            prompts=E5_PROMPTS,
            seed=2,
        ),
        Family(
            name="bert-dense",
            model_type="bert",
            task="embed",
            pooling="cls",
            dense=FAMILY_HIDDEN // 2,
            normalize=True,
            seed=3,
        ),
        Family(name="splade", model_type="bert", task="sparse", layout="sparse-encoder"),
        Family(name="rerank-bert", model_type="bert", task="rerank", layout="cross-encoder"),
        Family(
            name="rerank-xlm-roberta",
            model_type="xlm-roberta",
            task="rerank",
            layout="transformers",
        ),
        Family(name="classify-bert", model_type="bert", task="classify", layout="transformers"),
        Family(
            name="classify-roberta", model_type="roberta", task="classify", layout="transformers"
        ),
    )
}
"""The matrix rows. Reranker layouts differ on purpose: bge-reranker-* ship plain transformers
folders, ms-marco cross-encoders the layout `CrossEncoder.save` writes. `bert-dense` is shaped
like LaBSE (CLS → Dense tanh → Normalize); `splade` like naver/splade (masked-LM head, max
pooling of relu logits)."""

_SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "distilbert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "mpnet": ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>"],
    "deberta-v2": ["[PAD]", "[CLS]", "[SEP]", "[UNK]"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "modernbert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
    "qwen3": ["<|endoftext|>"],
}
"""Special tokens first in the vocabulary, in each family's real order (XLM-R and DeBERTa add
their mask token last, as the real vocabularies do)."""


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """The built-in WordPiece vocabulary cut to its characters and the ~1000 commonest words
    (entries 999-2999; 0-998 are [PAD], [unusedN] and the four other specials)."""
    lines = (builtin_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    pieces = specials + [p for p in lines[999:3000] if p not in specials]
    return {p: i for i, p in enumerate(pieces)}


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary made from the WordPiece one: word-initial pieces
    get the `▁` prefix, continuations lose `##`; earlier (commoner) pieces score higher."""
    seen: set[str] = set(specials)
    out = [(s, 0.0) for s in specials] + [("▁", -2.0)]
    seen.add("▁")
    for rank, piece in enumerate(_wordpiece_vocab([])):
        for candidate in (piece[2:],) if piece.startswith("##") else (piece, "▁" + piece):
            if candidate and candidate not in seen:
                seen.add(candidate)
                out.append((candidate, -3.0 - float(np.log1p(rank))))
    return out


def _training_corpus() -> list[str]:
    words = [w for w in _wordpiece_vocab([]) if w.isalpha() and w.isascii()]
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    lines += [" ".join(w.capitalize() for w in words[i : i + 8]) for i in range(0, len(words), 32)]
    lines += ["0 1 2 3 4 5 6 7 8 9 , . ! ? ' \" - ( ) : ; / % $ & @ #"] * 8
    return lines


def _bpe_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (GPT-2 style) trained on the words of the built-in vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    return dict(model["vocab"]), [(a, b) for a, b in model["merges"]]


def family_tokenizer(model_type: str) -> Any:
    """The family's own transformers tokenizer class, built offline from a small vocabulary
    (transformers builds the normaliser, pre-tokeniser and special-token template itself)."""
    from tokenizers import processors

    # Untyped on purpose: transformers annotates `merges` as list[str], but its BPE wants pairs.
    transformers: Any = importlib.import_module("transformers")
    specials = _SPECIALS[model_type]
    common: dict[str, Any] = {"model_max_length": FAMILY_MAX_LENGTH}
    if model_type in ("bert", "distilbert", "mpnet"):
        cls = {
            "bert": transformers.BertTokenizer,
            "distilbert": transformers.DistilBertTokenizer,
            "mpnet": transformers.MPNetTokenizer,
        }[model_type]
        return cls(vocab=_wordpiece_vocab(specials), **common)
    if model_type == "xlm-roberta":
        vocab = [*_unigram_vocab(specials), ("<mask>", 0.0)]
        return transformers.XLMRobertaTokenizer(vocab=vocab, **common)
    if model_type == "deberta-v2":
        vocab = [*_unigram_vocab(specials), ("[MASK]", 0.0)]
        return transformers.DebertaV2Tokenizer(vocab=vocab, unk_id=3, **common)
    vocab_ids, merges = _bpe_vocab(specials)
    if model_type == "roberta":
        return transformers.RobertaTokenizer(vocab=vocab_ids, merges=merges, **common)
    if model_type == "qwen3":
        tok = transformers.Qwen2Tokenizer(
            vocab=vocab_ids, merges=merges, padding_side="left", **common
        )
        # Qwen3-Embedding's tokenizer appends <|endoftext|>, the token last-token pooling reads.
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eos)],
        )
        return tok
    if model_type == "modernbert":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        backend = Tokenizer(models.BPE(vocab=vocab_ids, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[(t, vocab_ids[t]) for t in ("[CLS]", "[SEP]")],
        )
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            mask_token="[MASK]",
            **common,
        )
    raise ValueError(f"no tokenizer for model type {model_type!r}")


def family_config(model_type: str, *, vocab_size: int, pad_token_id: int, **extra: Any) -> Any:
    """A small but real config of the family: hidden 64, 2 layers, wide initial weights."""
    from transformers import AutoConfig

    values: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "initializer_range": FAMILY_STD,
    }
    if model_type == "distilbert":
        values.update(dim=FAMILY_HIDDEN, n_layers=2, n_heads=4, hidden_dim=128)
        values["max_position_embeddings"] = FAMILY_POSITIONS
    else:
        values.update(
            hidden_size=FAMILY_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=FAMILY_POSITIONS,
        )
    if model_type in ("roberta", "xlm-roberta"):
        # Positions start after padding_idx, as in the real checkpoints (514 = 512 + 2).
        values["max_position_embeddings"] = FAMILY_POSITIONS + pad_token_id + 1
        values["type_vocab_size"] = 1
    if model_type == "deberta-v2":
        # DeBERTa-v3's attention: relative positions, no absolute position embeddings.
        values.update(
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
        )
    if model_type == "modernbert":
        values.update(global_attn_every_n_layers=2, local_attention=16)
        # The real ids live at 50281/50282; here they are the tokenizer's [CLS] and [SEP].
        ids = {"cls_token_id": 1, "sep_token_id": 2, "bos_token_id": 1, "eos_token_id": 2}
        values.update(ids)
    if model_type == "qwen3":
        values.update(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    values.update(extra)
    return AutoConfig.for_model(model_type, **values)


def build_family(path: Path, family: Family | str) -> Path:
    """Write the family's tiny model folder at `path` (seeded: the same bytes every run)."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    fam = FAMILIES[family] if isinstance(family, str) else family
    tokenizer = family_tokenizer(fam.model_type)
    labels: dict[str, Any] = {}
    if fam.task == "rerank":
        labels = {"num_labels": 1}
    elif fam.task == "classify":
        labels = {
            "num_labels": len(CLASSIFY_LABELS),
            "id2label": dict(CLASSIFY_LABELS),
            "label2id": {v: k for k, v in CLASSIFY_LABELS.items()},
        }
    config = family_config(
        fam.model_type,
        vocab_size=len(tokenizer),
        pad_token_id=int(tokenizer.pad_token_id),
        **labels,
    )
    torch.manual_seed(fam.seed)
    auto: Any = {"embed": AutoModel, "sparse": AutoModelForMaskedLM}.get(
        fam.task, AutoModelForSequenceClassification
    )
    model = auto.from_config(config)
    weights = path / "transformers" if fam.layout != "transformers" else path
    weights.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    if fam.layout == "transformers":
        return path
    if fam.layout == "cross-encoder":
        from sentence_transformers import CrossEncoder

        CrossEncoder(str(weights), device="cpu", local_files_only=True).save(str(path))
    elif fam.layout == "sparse-encoder":
        from sentence_transformers.sparse_encoder import SparseEncoder
        from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

        mlm = Transformer(
            str(weights), transformer_task="fill-mask", max_seq_length=FAMILY_MAX_LENGTH
        )
        modules = [mlm, SpladePooling(pooling_strategy="max", activation_function="relu")]
        SparseEncoder(modules=modules, device="cpu").save(str(path))
    else:
        _save_sentence_transformer(path, weights=weights, family=fam)
    shutil.rmtree(weights)
    return path


def _save_sentence_transformer(path: Path, *, weights: Path, family: Family) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    modules: list[Any] = [
        Transformer(str(weights), max_seq_length=FAMILY_MAX_LENGTH),
        Pooling(FAMILY_HIDDEN, pooling_mode=family.pooling),
    ]
    if family.dense:
        import torch

        # Seeded wide weights, as for the transformer: Dense's default init shrinks the output.
        generator = torch.Generator().manual_seed(family.seed)
        weight = torch.randn(family.dense, FAMILY_HIDDEN, generator=generator) * FAMILY_STD
        bias = torch.randn(family.dense, generator=generator) * FAMILY_STD
        modules.append(Dense(FAMILY_HIDDEN, family.dense, init_weight=weight, init_bias=bias))
    if family.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=dict(family.prompts))
    model.save(str(path))


def build_families(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Every family (or those named) under `root`, one folder each, keyed by family name."""
    return {name: build_family(root / name, name) for name in names or list(FAMILIES)}


def reference_sparse(path: Path, texts: list[str], *, max_length: int) -> Floats:
    """sentence-transformers' `SparseEncoder` vectors, dense (one column per vocabulary id)."""
    from sentence_transformers.sparse_encoder import SparseEncoder

    model = SparseEncoder(str(path), device="cpu", local_files_only=True)
    model.max_seq_length = max_length
    vectors = model.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    out: Floats = vectors.float().numpy()
    return out
