"""HF `tokenizers` (Rust) around a model's tokenizer.json: truncation either side, no padding.

Padding happens in the batcher, to the batch's bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Encoding, Tokenizer

from ember.errors import InvalidInput, ModelError

Item = str | tuple[str, str]
Direction = Literal["right", "left"]


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: list[int]
    type_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.ids)


def _explain(items: list[Item]) -> InvalidInput:
    """Why the tokenizer refused a batch: text that cannot be UTF-8 (lone surrogates)."""
    for index, item in enumerate(items):
        for text in (item,) if isinstance(item, str) else item:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                return InvalidInput(
                    f"input {index} is not valid Unicode (a lone surrogate at character "
                    f"{exc.start}); send UTF-8 text"
                )
    return InvalidInput("inputs must be texts or pairs of texts")


class TextTokenizer:
    """Encodes texts or (text, text) pairs to at most `max_length` tokens."""

    def __init__(self, *, path: Path, max_length: int) -> None:
        try:
            base = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelError(f"{path} is not a readable tokenizer: {exc}") from exc
        self.max_length = max_length
        self._by_direction: dict[str, Tokenizer] = {}
        for direction in ("right", "left"):
            tok = Tokenizer.from_str(base.to_str())
            tok.no_padding()
            tok.enable_truncation(max_length, direction=direction)
            self._by_direction[direction] = tok
        self._plain = Tokenizer.from_str(base.to_str())
        self._plain.no_padding()
        self._plain.no_truncation()
        self.pad_id = self._pad_id(base)

    @staticmethod
    def _pad_id(tok: Tokenizer) -> int:
        padding = tok.padding
        if padding and "pad_id" in padding:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|endoftext|>"):
            found = tok.token_to_id(token)
            if found is not None:
                return found
        return 0

    def encode(
        self, items: list[Item], *, truncate: bool = True, direction: Direction = "right"
    ) -> list[Encoded]:
        """Encode; with `truncate` off, an input over the max length is a validation error."""
        tok = self._by_direction[direction]
        try:
            encodings: list[Encoding] = tok.encode_batch(items, add_special_tokens=True)
        except TypeError:
            raise _explain(items) from None
        out: list[Encoded] = []
        for index, enc in enumerate(encodings):
            if not truncate and enc.overflowing:
                raise InvalidInput(
                    f"input {index} is longer than the model's {self.max_length} tokens; "
                    "shorten it or send `truncate: true`"
                )
            out.append(Encoded(ids=enc.ids, type_ids=enc.type_ids))
        return out

    def tokenize(self, items: list[Item], *, add_special_tokens: bool = True) -> list[Encoding]:
        """Full tokenisation (offsets, tokens) for `/tokenize`, truncated at the max length."""
        encodings: list[Encoding] = self._by_direction["right"].encode_batch(
            items, add_special_tokens=add_special_tokens
        )
        return encodings

    def count(self, text: str) -> int:
        return len(self._plain.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._plain.decode(ids)

    def shortest(self, *, pair: bool) -> int:
        """Tokens of the shortest input: an empty text (or pair of empty texts), which is
        its special tokens alone ([CLS] [SEP] = 2; XLM-R's `<s></s></s></s>` pair = 4)."""
        return len(self._plain.encode("", "" if pair else None, add_special_tokens=True).ids)

    def of_length(self, tokens: int, *, pair: bool, seed: str) -> Encoded:
        """An input of exactly `tokens` tokens (≥ `shortest(pair=pair)`), for warm-up: the
        seed's token ids cut to length and wrapped in the model's special tokens, so that no
        text is decoded and re-encoded (which can add or merge pieces)."""
        empty = self._plain.encode("", add_special_tokens=False)
        specials = len(self._plain.post_process(empty, empty if pair else None).ids)
        need = tokens - specials
        if need < 0:
            raise ValueError(f"no input is {tokens} tokens long: the special tokens alone are more")
        first = self._content(need - need // 2 if pair else need, seed)
        second = self._content(need // 2, seed) if pair else None
        enc = self._plain.post_process(first, second, add_special_tokens=True)
        if len(enc.ids) != tokens:  # a post-processor that adds tokens per content token
            raise ValueError(f"the model's tokenizer makes {len(enc.ids)} tokens, not {tokens}")
        return Encoded(ids=enc.ids, type_ids=enc.type_ids)

    def _content(self, tokens: int, seed: str) -> Encoding:
        """`tokens` content tokens (no special tokens) from `seed` repeated."""
        text = seed
        enc = self._plain.encode(text, add_special_tokens=False)
        while len(enc.ids) < tokens:
            if not enc.ids:
                raise ValueError(f"the warm-up seed {seed!r} gives no tokens")
            text = f"{text} {text}"
            enc = self._plain.encode(text, add_special_tokens=False)
        enc.truncate(tokens)
        return enc


# --- token ids from clients (http's `/decode` and token-id inputs) ---------------------------


def vocab_size(tokenizer: TextTokenizer) -> int:
    """How many ids the model's vocabulary has, added tokens included: valid ids are below."""
    return int(tokenizer._plain.get_vocab_size(with_added_tokens=True))


def decode_ids(
    tokenizer: TextTokenizer, ids: list[int], *, skip_special_tokens: bool = True
) -> str:
    """The text of `ids` (checked against `vocab_size` by the caller)."""
    return str(tokenizer._plain.decode(ids, skip_special_tokens=skip_special_tokens))


def encode_ids(
    tokenizer: TextTokenizer,
    rows: list[list[int]],
    *,
    truncate: bool = True,
    direction: Direction = "right",
) -> list[Encoded]:
    """Client token ids as model inputs, as given: no special tokens added (TEI sends ids as
    the whole sequence), truncated at the max length like text. Ids are checked against
    `vocab_size` by the caller."""
    limit = tokenizer.max_length
    out: list[Encoded] = []
    for index, row in enumerate(rows):
        kept = row
        if len(row) > limit:
            if not truncate:
                raise InvalidInput(
                    f"input {index} is longer than the model's {limit} tokens; "
                    "shorten it or send `truncate: true`"
                )
            kept = row[:limit] if direction == "right" else row[-limit:]
        out.append(Encoded(ids=list(kept), type_ids=[0] * len(kept)))
    return out


TIKTOKEN_HINT = (
    "; these look like tiktoken ids (an OpenAI tokenizer): this server tokenises with the "
    "model's own tokenizer, so send text and turn client-side tokenisation off (langchain-openai: "
    "`check_embedding_ctx_length=False`)"
)


def check_ids(rows: Sequence[Sequence[int]], *, vocab: int) -> None:
    """Every id within the vocabulary, else a 422 naming the first bad one (and, when the ids
    look like tiktoken's, why and what to change on the client)."""
    for r, row in enumerate(rows):
        if not row:
            raise InvalidInput(f"input {r} is an empty list of token ids")
        for k, token in enumerate(row):
            if not 0 <= token < vocab:
                hint = TIKTOKEN_HINT if vocab <= token < 200_019 else ""
                raise InvalidInput(
                    f"input {r}, position {k}: token id {token} is not in the model's "
                    f"vocabulary of {vocab} ids{hint}"
                )
