"""Engine paths through the whole app, with default settings: BERT and XLM-R cross-encoders
become ready on the default (onnx) backend and rerank like sentence-transformers (issue 13),
and every embedding option combination answers (issue 14's 500)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import running_app
from tests.corpus import PARITY_TEXTS
from tests.fakes import FakeFactory
from tests.integration.conftest import MAX_LENGTH, QUERY, TOL, by_index
from tests.tiny_tokenizers import tokenizer_json

pytestmark = pytest.mark.anyio


def build_xlmr_cross_encoder(path: Path, *, seed: int = 3) -> Path:
    """A tiny XLM-RoBERTa reranker (one label) with a SentencePiece-Unigram tokenizer, saved by
    transformers as the family's fast tokenizer: a pair is `<s> A </s></s> B </s>`, 4 tokens
    at the least."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizerFast,
    )

    backend = Tokenizer.from_str(tokenizer_json("unigram"))
    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )
    config = XLMRobertaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=backend.token_to_id("<pad>"),
        bos_token_id=backend.token_to_id("<s>"),
        eos_token_id=backend.token_to_id("</s>"),
        type_vocab_size=1,
        num_labels=1,
        initializer_range=0.2,  # BERT's 0.02 gives every pair nearly the same score
    )
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_xlmr_cross_encoder(tiny_dir: Path) -> Path:
    return build_xlmr_cross_encoder(tiny_dir / "xlmr-cross-encoder")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ember-cache")


@pytest.mark.parametrize("family", ["bert", "xlmr"])
async def test_cross_encoders_become_ready_on_the_default_backend_and_rerank(
    family: str,
    tiny_cross_encoder: Path,
    tiny_xlmr_cross_encoder: Path,
    cache_dir: Path,
) -> None:
    """Before, exact CPU buckets started at 2 and the cover plan warmed (1, 2), which no pair
    can be: `/ready` stayed 503 with `warm-up did not cover the shape set`."""
    from sentence_transformers import CrossEncoder

    path = tiny_cross_encoder if family == "bert" else tiny_xlmr_cross_encoder
    # Blank documents are left out of the comparison: transformers drops an empty second text
    # (and XLM-R's a blank one) from the pair, which ember, like TEI, keeps; they are sent below.
    docs = [d for d in PARITY_TEXTS if d.strip()] + ["x"]
    reference = CrossEncoder(str(path), device="cpu", max_length=MAX_LENGTH, local_files_only=True)
    expected = reference.predict([(QUERY, d) for d in docs], batch_size=64)
    assert float(expected.max() - expected.min()) > 0.01  # the comparison has teeth
    async with running_app(None, model=[str(path)], device="cpu", cache_dir=cache_dir) as (
        _app,
        client,
    ):
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        info = (await client.get("/info")).json()["models"][0]
        assert (info["task"], info["backend"]) == ("rerank", "onnx")
        assert info["warmup"]["covered"] and info["warmup"]["plan"] == "cover"
        shortest = 3 if family == "bert" else 4  # [CLS] [SEP] [SEP] / <s> </s></s> </s>
        assert info["buckets"]["seq"][0] == shortest
        r = await client.post("/rerank", json={"query": QUERY, "texts": docs})
        assert r.status_code == 200, r.text
        assert np.abs(by_index(r.json()) - expected).max() <= TOL
        # The shortest pair there is (the warmed first bucket), and a blank one.
        blank = await client.post("/rerank", json={"query": "", "texts": ["", " "]})
        assert blank.status_code == 200, blank.text


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dimensions", [None, 3])
async def test_embed_with_dimensions_and_without_normalising_answers(
    normalize: bool, dimensions: int | None
) -> None:
    """Two inputs, `dimensions` and `normalize: false` once answered 500: a column slice of
    the rows is not contiguous, and orjson refuses it."""
    async with running_app(FakeFactory()) as (_app, client):
        body: dict[str, object] = {"inputs": ["one text", "another"], "normalize": normalize}
        if dimensions is not None:
            body["dimensions"] = dimensions
        r = await client.post("/embed", json=body)
        assert r.status_code == 200, r.text
        vectors = np.array(r.json())
        assert vectors.shape[0] == 2 and (dimensions is None or vectors.shape[1] == dimensions)
        norms = np.linalg.norm(vectors, axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5) == normalize
