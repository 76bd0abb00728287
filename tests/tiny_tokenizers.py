"""Tiny tokenizers of the four families served models use, built offline with `tokenizers`.

Each has the family's model, pre-tokenizer and special-token template, trained on a few
sentences (vocabularies of a few hundred pieces), so tests can see how many tokens a text, a
pair and an empty input make, as the real families do:
- `wordpiece`: BERT, `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` (pair types 0/1);
- `unigram`: XLM-RoBERTa (SentencePiece Unigram, Metaspace), `<s> A </s>` / `<s> A </s></s> B </s>`;
- `bytelevel`: RoBERTa (byte-level BPE), the same template as XLM-R;
- `eos`: Qwen-like byte-level BPE with only `<|endoftext|>` at the end.
"""

from __future__ import annotations

from functools import cache

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is a fast embedding server?",
    "an embedding server that is warm before it says it is ready",
    "Paris is the capital of France, and Berlin that of Germany.",
    "rerankers score a query against each document in a list",
    "tokenizers split text into pieces: words, sub-words and bytes",
    "東京 is a city; 🚀 is a rocket; numbers like 12345 are common",
] * 4

FAMILIES = ("wordpiece", "unigram", "bytelevel", "eos")


def _wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # type: ignore[call-arg]
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # type: ignore[assignment]
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # type: ignore[assignment]
    tok.decoder = decoders.WordPiece()  # type: ignore[assignment]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        CORPUS,
        trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False),
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def _unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    # The pipeline transformers 5 builds for XLMRobertaTokenizer(Fast), so that a folder saved
    # with this tokenizer tokenises alike in ember (tokenizer.json) and in transformers.
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()  # type: ignore[assignment]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.UnigramTrainer(
            vocab_size=200, special_tokens=specials, unk_token="<unk>", show_progress=False
        ),
    )
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return tok


def _byte_bpe(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tok.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _bytelevel() -> Tokenizer:
    tok = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(  # type: ignore[assignment]
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def _eos() -> Tokenizer:
    tok = _byte_bpe(["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="$A <|endoftext|>",
        pair="$A $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eos)],
    )
    return tok


@cache
def tokenizer_json(family: str) -> str:
    """The family's tokenizer as tokenizer.json text (built once a process)."""
    builders = {"wordpiece": _wordpiece, "unigram": _unigram, "bytelevel": _bytelevel, "eos": _eos}
    tok: Tokenizer = builders[family]()
    return tok.to_str()
