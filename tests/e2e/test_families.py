"""The model-family matrix: one tiny model per family, served by a real `ember serve` per CPU
backend with default settings, each row compared with sentence-transformers / transformers.

All rows that work share ONE server per backend (`--model NAME=PATH` repeated), so the matrix
costs one start per backend rather than one per model. A row known to fail today gets a server
of its own, under `xfail(strict=True)`: a failing model would keep the shared server from ever
being ready, and strict xfail turns the fix into a failure here until the mark is removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ember.bench.tiny_families import FAMILIES, FAMILY_MAX_LENGTH, Family, reference_sparse
from ember.bench.tiny_models import CLASSIFY_LABELS, reference_embeddings, reference_logits
from tests.e2e.conftest import Server, get
from tests.e2e.conftest import post_json as post

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BACKENDS: dict[str, tuple[str, ...]] = {"onnx": (), "torch": ("--backend", "torch")}
"""Server arguments per CPU backend: onnx is the default, so it gets none."""

KNOWN_FAILURES: dict[tuple[str, str], str] = {}
"""(backend, family) rows that fail today, with why: each served alone, so that one row's fix
is not hidden by another's failure."""

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
"""About 110 tokens in every family's tokenizer: far over FAMILY_MAX_LENGTH, so truncated."""
TEXTS = [
    "hello",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding servers should be warm before they say they are ready.",
    "naïve café, Zürich 2026!",
    LONG_TEXT,
]
QUERY = "what is a fast embedding server?"
COS_MIN = 0.9999
SCORE_TOL = 1e-3
SPARSE_TOL = 1e-4
"""SPLADE weights, per vocabulary id (indices and values)."""


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.sum(a * b, axis=1))


class Matrix:
    """Servers for the matrix: one per backend shared by the rows that work, started on first
    use (starting one stops the other: 2 cores), and one per known failure."""

    def __init__(self, *, models: dict[str, Path], cache: Path, logs: Path) -> None:
        self.models = models
        self.cache = cache
        self.logs = logs
        self.shared: dict[str, Server] = {}
        self.ready_seconds: dict[str, float] = {}

    def _start(self, key: str, backend: str, names: list[str]) -> Server:
        args = [a for n in names for a in ("--model", f"{n}={self.models[n]}")]
        srv = Server(
            *BACKENDS[backend],
            *args,
            env={"EMBER_CACHE_DIR": str(self.cache)},
            log=self.logs / f"{key}.log",
        )
        try:
            srv.wait_ready(timeout=600)
        except BaseException:
            srv.stop()
            raise
        self.ready_seconds[key] = time.monotonic() - srv.started
        print(f"\nmatrix {key}: {len(names)} models ready in {self.ready_seconds[key]:.1f} s")
        return srv

    def server(self, backend: str) -> Server:
        """The backend's server of every row not known to fail."""
        if backend not in self.shared:
            self.close()
            names = [n for n in FAMILIES if (backend, n) not in KNOWN_FAILURES]
            self.shared[backend] = self._start(backend, backend, names)
        return self.shared[backend]

    def alone(self, backend: str, name: str) -> Server:
        """A server of `name` only; the caller stops it."""
        self.close()
        return self._start(f"{backend}-{name}", backend, [name])

    def close(self) -> None:
        for srv in self.shared.values():
            srv.stop()
        self.shared.clear()


@pytest.fixture(scope="module")
def matrix(
    tiny_families: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Matrix]:
    m = Matrix(
        models=tiny_families,
        cache=tmp_path_factory.mktemp("families-cache"),
        logs=tmp_path_factory.mktemp("families-logs"),
    )
    try:
        yield m
    finally:
        m.close()


def reference_token_states(path: Path, texts: list[str]) -> list[np.ndarray]:
    """transformers' `AutoModel(...).last_hidden_state` per text (one row per token, special
    tokens included), truncated as served: what TEI's /embed_all answers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    states = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=FAMILY_MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            states.append(model(**enc).last_hidden_state[0].numpy())
    return states


def check_embed_all(server: Server, family: Family, path: Path) -> float:
    """/embed_all of an embedding row against transformers per token (before pooling and any
    Dense module, not normalised, as TEI); a 424 for the rows TEI refuses (SPLADE, heads)."""
    body = {"inputs": TEXTS, "model": family.name}
    if family.task != "embed":
        refused = httpx.post(server.url + "/embed_all", json=body, timeout=30)
        assert refused.status_code == 424, (family.name, refused.text)
        return 1.0
    got = post(server.url + "/embed_all", body)
    expected = reference_token_states(path, TEXTS)
    assert [len(v) for v in got] == [len(e) for e in expected], family.name
    return min(float(cosines(np.array(g), e).min()) for g, e in zip(got, expected, strict=True))


def check_row(server: Server, family: Family, path: Path) -> str:
    """One row: the served outputs of `family` equal the reference's on the same weights;
    returns the figure compared (worst cosine or largest difference)."""
    name = family.name
    if family.task == "embed":
        vectors = np.array(post(server.url + "/embed", {"inputs": TEXTS, "model": name}))
        expected = reference_embeddings(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
        cos = cosines(vectors, expected)
        assert cos.min() >= COS_MIN, (name, cos)
        worst = float(cos.min())
        per_token = check_embed_all(server, family, path)
        assert per_token >= COS_MIN, (name, "embed_all", per_token)
        for prompt in family.prompts:
            body = {"inputs": TEXTS, "model": name, "prompt_name": prompt}
            vectors = np.array(post(server.url + "/embed", body))
            expected = reference_embeddings(
                path, TEXTS, max_length=FAMILY_MAX_LENGTH, prompt_name=prompt
            )
            cos = cosines(vectors, expected)
            assert cos.min() >= COS_MIN, (name, prompt, cos)
            worst = min(worst, float(cos.min()))
        return f"cos min {worst:.6f}, per token {per_token:.6f}"
    if family.task == "sparse":
        # TEI's /embed_sparse: per text, the non-zero (index, value) pairs over the vocabulary.
        rows = post(server.url + "/embed_sparse", {"inputs": TEXTS, "model": name})
        expected = reference_sparse(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
        got = np.zeros_like(expected)
        for i, row in enumerate(rows):
            for item in row:
                got[i, item["index"]] = item["value"]
        assert np.abs(got - expected).max() <= SPARSE_TOL, name
        check_embed_all(server, family, path)  # TEI: not for SPLADE models
        return f"max abs diff {np.abs(got - expected).max():.2e}"
    if family.task == "rerank":
        body = {"query": QUERY, "texts": TEXTS, "raw_scores": True, "model": name}
        ranked = post(server.url + "/rerank", body)
        got = np.zeros(len(TEXTS), dtype=np.float32)
        for item in ranked:
            got[item["index"]] = item["score"]
        check_embed_all(server, family, path)
        logits = reference_logits(path, [QUERY] * len(TEXTS), TEXTS, max_length=FAMILY_MAX_LENGTH)
        assert np.abs(got - logits[:, 0]).max() <= SCORE_TOL, (name, got, logits[:, 0])
        return f"max abs diff {np.abs(got - logits[:, 0]).max():.2e}"
    predictions = post(
        server.url + "/predict", {"inputs": TEXTS, "raw_scores": True, "model": name}
    )
    got = np.array(
        [
            [{p["label"]: p["score"] for p in row}[label] for label in CLASSIFY_LABELS.values()]
            for row in predictions
        ]
    )
    logits = reference_logits(path, TEXTS, max_length=FAMILY_MAX_LENGTH)
    assert np.abs(got - logits).max() <= SCORE_TOL, (name, got, logits)
    return f"max abs diff {np.abs(got - logits).max():.2e}"


def test_long_text_is_over_every_max_length(tiny_families: dict[str, Path]) -> None:
    # Truncation is only exercised if the long text really is longer than every model's limit.
    from transformers import AutoTokenizer

    for name, path in tiny_families.items():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        length = len(tokenizer(LONG_TEXT, truncation=False)["input_ids"])
        assert length > 2 * FAMILY_MAX_LENGTH, (name, length)


ROWS = [
    pytest.param(
        backend,
        name,
        id=f"{backend}-{name}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(backend, name)])]
        if (backend, name) in KNOWN_FAILURES
        else [],
    )
    for backend in BACKENDS
    # Known failures last, so that each backend's shared server starts once.
    for name in sorted(FAMILIES, key=lambda n: (backend, n) in KNOWN_FAILURES)
]


@pytest.mark.parametrize(("backend", "name"), ROWS)
def test_family_matches_reference(
    matrix: Matrix, tiny_families: dict[str, Path], backend: str, name: str
) -> None:
    if (backend, name) in KNOWN_FAILURES:
        server = matrix.alone(backend, name)
        try:
            check_row(server, FAMILIES[name], tiny_families[name])
        finally:
            server.stop()
        return
    server = matrix.server(backend)
    figure = check_row(server, FAMILIES[name], tiny_families[name])
    print(f"matrix row {backend} {name}: {figure}")
    if backend == "torch":
        (info,) = (m for m in get(server.url + "/info")[1]["models"] if m["model_id"] == name)
        # transformers refuses SDPA for MPNet and DeBERTa-v2; everything else gets it.
        eager = FAMILIES[name].model_type in ("mpnet", "deberta-v2")
        assert info["attention"] == ("eager" if eager else "sdpa"), info
        assert info["family"] == FAMILIES[name].model_type, info
