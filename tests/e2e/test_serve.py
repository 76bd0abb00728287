"""A real `ember serve`: probes, the openai client, TEI requests, parity, bad inputs, drain."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ember.models import builtin_path
from tests.corpus import PARITY_TEXTS
from tests.e2e.conftest import Server, get

pytestmark = pytest.mark.e2e


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(builtin_path()), device="cpu")
    return np.asarray(model.encode(PARITY_TEXTS, batch_size=8, normalize_embeddings=True))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_health_answers_at_once_while_ready_waits(ember_cache: Path, tmp_path: Path) -> None:
    srv = Server(env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / "log")
    try:
        seconds, body = srv.wait_health(timeout=10)
        assert body["status"] == "alive"
        status, ready = get(srv.url + "/ready")
        if status == 503:
            assert ready["status"] in ("starting", "loading", "warming")
            assert seconds < 2.0, f"/health took {seconds:.2f} s"
        report = srv.wait_ready()
        assert report["warmup"][0]["covered"] is True
        info = get(srv.url + "/info")[1]
        assert info["warmup"]["shapes"]
    finally:
        assert srv.stop() == 0


def test_openai_client_matches_sentence_transformers(server: Server, reference: np.ndarray) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(
        input=PARITY_TEXTS, model="sentence-transformers/all-MiniLM-L6-v2"
    )
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    cos = cosines(vectors, reference)
    assert cos.min() >= 0.9999, cos
    assert got.usage.prompt_tokens > 0
    single = client.embeddings.create(
        input="hello", model="sentence-transformers/all-MiniLM-L6-v2", encoding_format="float"
    )
    assert len(single.data[0].embedding) == 384


def test_tei_embed_matches_sentence_transformers(server: Server, reference: np.ndarray) -> None:
    status, body = post(server.url + "/embed", {"inputs": PARITY_TEXTS})
    assert status == 200
    assert cosines(np.array(body, dtype=np.float32), reference).min() >= 0.9999
    status, b64 = post(
        server.url + "/v1/embeddings", {"input": PARITY_TEXTS[:3], "encoding_format": "base64"}
    )
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]]
    )
    assert cosines(decoded, reference[:3]).min() >= 0.9999


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{oops", 422),
        ({"inputs": []}, 422),
        ({"inputs": ["x"] * 2049}, 413),
        ({"inputs": "word " * 400, "truncate": False}, 422),
        ({"inputs": "x", "dimensions": 0}, 422),
        ({"inputs": "x" * 100_000}, 200),
        ({"inputs": "nul\u0000, zero\u200bwidth, \u202eRTL"}, 200),
        ({"inputs": "lone \ud800 surrogate"}, 422),
    ],
)
def test_bad_inputs_get_their_status_and_the_server_keeps_serving(
    server: Server, body: Any, status: int
) -> None:
    got, answer = post(server.url + "/embed", body)
    assert got == status, answer
    if status != 200:
        assert answer["error"] and answer["error_type"]
    assert post(server.url + "/embed", {"inputs": "still fine"})[0] == 200


def test_sigterm_drains_in_flight_requests(ember_cache: Path, tmp_path: Path) -> None:
    srv = Server(env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / "log")
    try:
        srv.wait_ready()
        _drain_under_load(srv)
    finally:
        srv.stop()


def _drain_under_load(srv: Server) -> None:
    results: list[int] = []
    started = threading.Barrier(9)

    def client() -> None:
        started.wait()
        results.append(
            post(srv.url + "/embed", {"inputs": ["a longer text to embed " * 20] * 32})[0]
        )

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    # Let all eight reach the server: one that arrives after SIGTERM rightly gets a 503.
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    status, body = get(srv.url + "/ready")
    assert (status, body["status"]) == (503, "draining")
    for t in threads:
        t.join(timeout=60)
    assert srv.proc.wait(timeout=30) == 0
    assert results.count(200) == 8, results
