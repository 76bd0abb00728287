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


def test_shortest_inputs_are_the_special_tokens(tok: TextTokenizer) -> None:
    assert tok.shortest(pair=False) == 2  # [CLS] [SEP]
    assert tok.shortest(pair=True) == 3  # [CLS] [SEP] [SEP]


@pytest.mark.parametrize("tokens", [3, 4, 8, 16])
def test_of_length_is_exact_and_shaped_like_a_real_input(tok: TextTokenizer, tokens: int) -> None:
    text = tok.of_length(tokens, pair=False, seed="the quick brown fox")
    assert text.length == tokens and text.ids[0] == 101 and text.ids[-1] == 102
    pair = tok.of_length(tokens, pair=True, seed="the quick brown fox")
    assert pair.length == tokens and pair.ids.count(102) == 2
    assert pair.type_ids[-1] == 1  # the second text's [SEP] is type 1, as a real pair's


def test_of_length_below_the_special_tokens_is_refused(tok: TextTokenizer) -> None:
    assert tok.of_length(2, pair=False, seed="x").length == 2
    with pytest.raises(ValueError, match="special tokens"):
        tok.of_length(2, pair=True, seed="x")


def test_empty_and_unicode_inputs(tok: TextTokenizer) -> None:
    encs = tok.encode(["", "🚀", "東京", "\u200b"])
    assert [e.length >= 2 for e in encs] == [True] * 4


def test_lone_surrogates_are_a_validation_error(tok: TextTokenizer) -> None:
    with pytest.raises(InvalidInput, match="lone surrogate"):
        tok.encode(["fine", "bad \ud800 text"])
