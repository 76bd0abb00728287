from __future__ import annotations

import pytest

from ember.engine.tokenizer import TextTokenizer
from ember.errors import InvalidInput
from ember.models import builtin_path


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(path=builtin_path() / "tokenizer.json", max_length=16)


def test_truncates_at_the_max_length_keeping_special_tokens(tok: TextTokenizer) -> None:
    (enc,) = tok.encode(["word " * 50])
    assert enc.length == 16
    assert enc.ids[0] == 101 and enc.ids[-1] == 102  # [CLS] ... [SEP]


def test_left_truncation_keeps_the_end(tok: TextTokenizer) -> None:
    text = " ".join(f"w{i}" for i in range(40)) + " final"
    (right,) = tok.encode([text], direction="right")
    (left,) = tok.encode([text], direction="left")
    assert tok.decode(left.ids).endswith("final")
    assert not tok.decode(right.ids).endswith("final")


def test_truncate_off_rejects_over_long_input(tok: TextTokenizer) -> None:
    with pytest.raises(InvalidInput, match="longer than the model's 16 tokens"):
        tok.encode(["short", "word " * 50], truncate=False)
    assert tok.encode(["short"], truncate=False)[0].length == 3


def test_pairs_carry_type_ids(tok: TextTokenizer) -> None:
    (enc,) = tok.encode([("query", "document text")])
    assert 1 in enc.type_ids and enc.type_ids[0] == 0


@pytest.mark.parametrize("tokens", [3, 8, 16])
def test_text_of_length_is_exact(tok: TextTokenizer, tokens: int) -> None:
    text = tok.text_of_length(tokens, seed="the quick brown fox")
    assert tok.encode([text])[0].length == tokens
    pair = tok.text_of_length(tokens, seed="the quick brown fox", pair=True)
    assert tok.encode([pair])[0].length == tokens


def test_empty_and_unicode_inputs(tok: TextTokenizer) -> None:
    encs = tok.encode(["", "🚀", "東京", "\u200b"])
    assert [e.length >= 2 for e in encs] == [True] * 4


def test_lone_surrogates_are_a_validation_error(tok: TextTokenizer) -> None:
    with pytest.raises(InvalidInput, match="lone surrogate"):
        tok.encode(["fine", "bad \ud800 text"])
