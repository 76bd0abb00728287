"""Real client libraries, each with its defaults and its documented way of pointing at a local
endpoint, against a real `ember serve` per model kind (issue 14, DESIGN "Compatibility contract").

Three servers (the built-in embedder, a tiny reranker, a tiny classifier), all with default
settings, start together once for the module. Vectors a client gets back are compared with the
same server's TEI `/embed` (cos ≥ 0.999999): the client must reach the model, not merely get a 200.
Each client is imported inside its test, with `importorskip`: a missing client is a skip naming it,
not an error for the others. docs/api.md "Clients" is the table of what these tests establish.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.bench.tiny_models import CLASSIFY_LABELS, build_classifier, build_reranker
from tests.e2e.conftest import Server
from tests.e2e.conftest import post_json as post

pytestmark = [
    pytest.mark.e2e,
    # The clients' own deprecation notices (pydantic v1 shims, asyncio policies) are not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

TEXTS = [
    "hello world",
    "A man is eating food.",
    "Embedding servers should be warm before they say they are ready.",
    "naïve café, Zürich 2026!",
]
QUERY = "what is a fast embedding server?"
COS_MIN = 0.999999
KEY = "sk-unused"
"""OpenAI-style clients refuse to start without a key; ember runs without one (--api-key unset)."""


@pytest.fixture(scope="module", autouse=True)
def _close_client_event_loops() -> Iterator[None]:
    """Some clients' synchronous calls make event loops of their own and never close them; at
    interpreter exit their self-pipes raise ResourceWarnings, which pytest (warnings as errors)
    turns into a failed run. Close what they left once the module is done."""
    yield
    import asyncio
    import gc

    for obj in gc.get_objects():
        # type(), not isinstance(): some objects' `__class__` warns (torch's deprecated aliases).
        loop = obj if issubclass(type(obj), asyncio.AbstractEventLoop) else None
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()


class Servers:
    """One default `ember serve` per model kind, started together (their loads overlap)."""

    def __init__(self, *, cache: Path, models: Path, logs: Path) -> None:
        env = {"EMBER_CACHE_DIR": str(cache)}
        self.embed = Server(env=env, log=logs / "embed.log")
        self.rerank = Server(
            "--model", str(build_reranker(models / "reranker")), env=env, log=logs / "rerank.log"
        )
        self.classify = Server(
            "--model",
            str(build_classifier(models / "classifier")),
            env=env,
            log=logs / "classify.log",
        )

    def all(self) -> list[Server]:
        return [self.embed, self.rerank, self.classify]


@pytest.fixture(scope="module")
def servers(ember_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    srv = Servers(
        cache=ember_cache,
        models=tmp_path_factory.mktemp("client-models"),
        logs=tmp_path_factory.mktemp("client-logs"),
    )
    try:
        for s in srv.all():
            s.wait_ready()
        yield srv
    finally:
        for s in srv.all():
            s.stop()


@pytest.fixture(scope="module")
def embed_url(servers: Servers) -> str:
    return servers.embed.url


@pytest.fixture(scope="module")
def served_name(embed_url: str) -> str:
    with urllib.request.urlopen(embed_url + "/info", timeout=5) as r:
        return str(json.loads(r.read())["model_id"])


def expected(url: str, texts: list[str]) -> np.ndarray:
    """The server's own TEI `/embed` vectors for `texts` (unit length)."""
    return np.asarray(post(url + "/embed", {"inputs": texts}), dtype=np.float64)


def assert_same(got: Any, url: str, texts: list[str]) -> None:
    vectors = np.asarray(got, dtype=np.float64).reshape(len(texts), -1)
    want = expected(url, texts)
    assert vectors.shape == want.shape, (vectors.shape, want.shape)
    cos = np.sum(vectors * want, axis=1) / np.linalg.norm(vectors, axis=1)
    assert cos.min() >= COS_MIN, cos


# --- openai ------------------------------------------------------------------------------


def test_openai_defaults_base64_any_model_name(embed_url: str, served_name: str) -> None:
    from openai import OpenAI

    with OpenAI(base_url=embed_url + "/v1", api_key=KEY, max_retries=0) as client:
        # No encoding_format: the client asks for base64 and decodes it itself.
        got = client.embeddings.create(input=TEXTS, model="text-embedding-3-small")
    assert_same([d.embedding for d in got.data], embed_url, TEXTS)
    assert got.model == served_name
    assert got.usage.prompt_tokens > 0


def test_openai_2048_inputs_in_one_request(embed_url: str) -> None:
    """OpenAI's own limit is 2048 inputs a request; an idle server takes them in one."""
    from openai import OpenAI

    texts = [f"item {i}" for i in range(2048)]
    with OpenAI(base_url=embed_url + "/v1", api_key=KEY, max_retries=0) as client:
        got = client.embeddings.create(input=texts, model="text-embedding-ada-002")
    assert [d.index for d in got.data] == list(range(2048))
    picks = [0, 1, 777, 2047]
    assert_same([got.data[i].embedding for i in picks], embed_url, [texts[i] for i in picks])


# --- huggingface_hub ---------------------------------------------------------------------


def test_huggingface_hub_feature_extraction(embed_url: str) -> None:
    from huggingface_hub import InferenceClient

    got = InferenceClient(base_url=embed_url).feature_extraction(TEXTS[1])
    assert_same(got, embed_url, TEXTS[1:2])
    got = InferenceClient(model=embed_url).feature_extraction(TEXTS[2])
    assert_same(got, embed_url, TEXTS[2:3])


def test_huggingface_hub_sentence_similarity(embed_url: str) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=embed_url)
    scores = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    vectors = expected(embed_url, TEXTS)
    np.testing.assert_allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)


def test_huggingface_hub_text_classification(servers: Servers) -> None:
    from huggingface_hub import InferenceClient

    url = servers.classify.url
    got = InferenceClient(model=url).text_classification(TEXTS[1])
    want = post(url + "/predict", {"inputs": TEXTS[1]})
    # It sends `"parameters": {}` and takes element [0] of the answer: TEI answers one text
    # with a flat list of labels (best first), so the client returns the best label alone.
    # (The HF Inference API nests it: [[...]].) Same result as against TEI itself.
    top = got[0] if isinstance(got, list) else got
    assert top.label == want[0]["label"] in CLASSIFY_LABELS.values()
    assert top.score == pytest.approx(want[0]["score"], abs=1e-6)


# --- LangChain ---------------------------------------------------------------------------

HELLO_WORLD_CL100K = [15339, 1917]
"""`tiktoken.get_encoding("cl100k_base").encode("hello world")`: what langchain-openai sends."""


def tiktoken_cached() -> bool:
    """Whether cl100k_base loads without the network (tiktoken downloads it on first use)."""
    import tiktoken

    try:
        tiktoken.get_encoding("cl100k_base")
    except Exception:  # no network: requests' connection error, whatever its wrapper
        return False
    return True


class _Cl100kHelloWorld:
    """Stands in for cl100k_base when it is not cached: the ids tiktoken gives TEXTS[0]."""

    def encode_ordinary(self, text: str) -> list[int]:
        assert text == TEXTS[0], text
        return list(HELLO_WORLD_CL100K)

    encode = encode_ordinary


def test_langchain_openai_default_sends_tiktoken_ids(
    embed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its default tokenises with tiktoken and sends ids for `text-embedding-ada-002`: a clear
    422 that says how to send text instead. Both ids of "hello world" are inside MiniLM's
    30522-id vocabulary, so a vocabulary check alone would embed the wrong tokens silently."""
    import openai
    from langchain_openai import OpenAIEmbeddings

    if not tiktoken_cached():
        import tiktoken

        encoding = _Cl100kHelloWorld()
        monkeypatch.setattr(tiktoken, "encoding_for_model", lambda _name: encoding)
        monkeypatch.setattr(tiktoken, "get_encoding", lambda _name: encoding)
    embeddings = OpenAIEmbeddings(base_url=embed_url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        embeddings.embed_documents(TEXTS[:1])
    message = str(info.value)
    assert "these look like tiktoken ids" in message
    assert "check_embedding_ctx_length=False" in message


def test_langchain_openai_without_client_tokenisation(embed_url: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        base_url=embed_url + "/v1", api_key=KEY, max_retries=0, check_embedding_ctx_length=False
    )
    assert_same(embeddings.embed_documents(TEXTS), embed_url, TEXTS)
    assert_same(embeddings.embed_query(QUERY), embed_url, [QUERY])


# --- LlamaIndex --------------------------------------------------------------------------


def test_llama_index_openai(embed_url: str) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    embedding = OpenAIEmbedding(api_base=embed_url + "/v1", api_key=KEY, max_retries=0)
    assert_same(embedding.get_text_embedding_batch(TEXTS), embed_url, TEXTS)
    assert_same(embedding.get_query_embedding(QUERY), embed_url, [QUERY])


def test_llama_index_text_embeddings_inference(embed_url: str) -> None:
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    # model_name is required; a bge name would make the client prefix queries itself.
    embedding = TextEmbeddingsInference(
        model_name="sentence-transformers/all-MiniLM-L6-v2", base_url=embed_url
    )
    assert_same(embedding.get_text_embedding_batch(TEXTS), embed_url, TEXTS)
    assert_same(embedding.get_query_embedding(QUERY), embed_url, [QUERY])


# --- Haystack ----------------------------------------------------------------------------


def test_haystack_openai_embedders(embed_url: str) -> None:
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    key = Secret.from_token(KEY)
    text = OpenAITextEmbedder(api_key=key, api_base_url=embed_url + "/v1").run(QUERY)
    assert_same(text["embedding"], embed_url, [QUERY])
    documents = [Document(content=t) for t in TEXTS]
    out = OpenAIDocumentEmbedder(api_key=key, api_base_url=embed_url + "/v1").run(documents)
    assert_same([d.embedding for d in out["documents"]], embed_url, TEXTS)


# --- litellm -----------------------------------------------------------------------------


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    # Its documented offline switch: the model cost map is read from the package, not GitHub.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LITELLM_TELEMETRY", "False")
    return pytest.importorskip("litellm")


def test_litellm_openai_and_infinity_embedding(embed_url: str, litellm: Any) -> None:
    got = litellm.embedding(
        model="openai/my-embedder", api_base=embed_url + "/v1", api_key=KEY, input=TEXTS
    )
    assert_same([d["embedding"] for d in got.data], embed_url, TEXTS)
    got = litellm.embedding(
        model="infinity/my-embedder", api_base=embed_url, api_key=KEY, input=TEXTS
    )
    assert_same([d["embedding"] for d in got.data], embed_url, TEXTS)


def rerank_scores(url: str) -> list[float]:
    """The server's own TEI `/rerank` scores, in document order."""
    ranked = post(url + "/rerank", {"query": QUERY, "texts": TEXTS})
    scores = [0.0] * len(TEXTS)
    for item in ranked:
        scores[item["index"]] = item["score"]
    return scores


@pytest.mark.parametrize(
    "provider",
    [
        "cohere",
        # Infinity's body (query, documents) on TEI's /rerank: answered in Cohere v1's shape.
        "infinity",
    ],
)
def test_litellm_rerank(servers: Servers, litellm: Any, provider: str) -> None:
    url = servers.rerank.url
    got = litellm.rerank(
        model=f"{provider}/my-reranker", api_base=url, api_key=KEY, query=QUERY, documents=TEXTS
    )
    want = rerank_scores(url)
    assert len(got.results) == len(TEXTS)
    for item in got.results:
        assert item["relevance_score"] == pytest.approx(want[item["index"]], abs=1e-6)
