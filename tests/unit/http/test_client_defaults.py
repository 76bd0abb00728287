"""What client libraries send by default, checked without an app (tests/e2e/test_clients.py
drives the libraries themselves against a real server)."""

from __future__ import annotations

import pytest

from ember.errors import InvalidInput
from ember.http import schemas as s
from ember.http import shaping

SERVED = ("sentence-transformers/all-MiniLM-L6-v2", "minilm")


@pytest.mark.parametrize("name", ["text-embedding-ada-002", "text-embedding-3-small"])
def test_ids_for_an_openai_model_name_get_the_tiktoken_hint(name: str) -> None:
    # langchain-openai's default: tiktoken ids, model text-embedding-ada-002.
    with pytest.raises(InvalidInput, match="check_embedding_ctx_length=False"):
        shaping.check_tiktoken_ids(name, served=SERVED)


@pytest.mark.parametrize("name", [None, "", "minilm", SERVED[0], "my-embedder"])
def test_ids_for_a_served_or_neutral_name_pass(name: str | None) -> None:
    shaping.check_tiktoken_ids(name, served=SERVED)


def test_ids_for_an_openai_name_the_server_serves_pass() -> None:
    shaping.check_tiktoken_ids("text-embedding-3-small", served=("text-embedding-3-small",))


def test_null_encoding_format_means_float() -> None:
    # litellm sends `"encoding_format": null` on purpose.
    req = s.EmbeddingsRequest.model_validate({"input": "a", "encoding_format": None})
    assert req.encoding_format == "float"
    with pytest.raises(ValueError, match="encoding_format"):
        s.EmbeddingsRequest.model_validate({"input": "a", "encoding_format": "double"})
