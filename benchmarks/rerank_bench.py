"""Rerank and classify on CPU: ember against Infinity, issue 5's targets.

    .venv/bin/python benchmarks/rerank_bench.py --rounds 3      # everything, ≈ 16 min on 2 cores
    .venv/bin/python benchmarks/rerank_bench.py --phases load --servers ember --duration 5

Phases (`--phases`, in this order):
- build: a MiniLM-L6-sized cross-encoder (hidden 384, 6 layers, 12 heads, intermediate 1536,
  one label) and a three-label classifier of the same size, seeded random weights and the built-in
  model's real tokenizer (ember.bench.tiny_models), under `--work`, unless `--model` /
  `--classifier` name existing folders. Random weights cost exactly the FLOPs of trained ones.
- prepare: `ember prepare DIR` for both (and `--quantize int8` for the reranker), so no measured
  start includes the ONNX export.
- load: one server at a time, `--servers` in order, `--rounds` times (alternating): ember (fp32),
  ember-int8, Infinity `--engine torch`. Spawn, wait for ready (ember `/ready`; Infinity
  `/health`, its port opens after its warm-up), then closed-loop rerank at each `--concurrency`:
  every request one query of `--query-words` words against `--docs` fresh documents of `--words`
  words, `--warmup` s unmeasured and then `--duration` s (requests in flight at the deadline are
  awaited and counted). ember is driven through TEI `/rerank` and `/v1/rerank` (int8: `/rerank`),
  Infinity through `/rerank`. Before the load each route answers the parity request (below) with
  and without raw scores. `other_cpu_pct` is the machine's CPU not spent by the server or this
  client in the window: anything above a few percent means a neighbour disturbed the level.
- first: issue 5's first-request penalty on ember, `--first-runs` spawns serving the reranker and
  the classifier together: after `/ready`, the first request of each class (rerank 1 query x 1
  doc, rerank 1 x 32 docs of 60 words, predict 1 text of 20 words, predict 32 texts of 40 words),
  then per class the median of 20 back-to-back requests and of 5 each sent after 0.2 s of quiet
  (RESULTS.md says why both).
- parity: the servers' scores against each other and against transformers on the same folder
  (max abs difference, sigmoid and raw; classifier: ember's softmax and logits).

Results: JSON under `--out` (load-<server>.json, first-ember.json, parity.json, models.json,
summary.json), server logs beside them; a markdown summary on stdout. The client is ember bench's
asyncio HTTP/1.1 client (about 20-90 µs CPU a request); CPU figures are percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from ember.bench.client import Endpoint, HttpConnection, HttpError, make_text
from ember.bench.load import (
    CpuMeter,
    Tally,
    latency_summary,
    parse_concurrency,
    tree_cpu_delta,
    write_json,
)
from ember.bench.startup import (
    IDLE_GAP,
    IDLE_REPEATS,
    Probes,
    free_port,
    machine_info,
    spawn_server,
    stop_server,
    tree_rss_mb,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]

PY = ROOT / ".venv" / "bin" / "python"
INFINITY_VENV = ROOT / ".venv-infinity"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "HUGGINGFACE_HUB_CACHE": str(INFINITY_VENV / "hf-cache"),
    "HF_HUB_CACHE": str(INFINITY_VENV / "hf-cache"),
}

MINILM_L6: dict[str, Any] = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    # tiny_config's 0.2 saturates a 6-layer model (every sigmoid 0 or 1); BERT's 0.02 makes
    # every score nearly equal. At 0.05 the logits spread over about -0.5..0.2.
    "initializer_range": 0.05,
}
"""all-MiniLM-L6-v2's shape (and ms-marco-MiniLM-L-6-v2's, the common small reranker)."""

PHASES = ("build", "prepare", "load", "first", "parity")
SERVERS = ("ember", "ember-int8", "infinity")
"""ember-int8: `--quantize int8` (dynamic int8 weights, VNNI), driven through TEI `/rerank` only."""

Shape = Literal["tei_rerank", "v1_rerank", "predict"]
Scores = dict[int, float]


# --- models ----------------------------------------------------------------------------------


def build_model(path: Path, *, task: Literal["rerank", "classify"], seed: int) -> Path:
    """A MiniLM-L6-sized BertForSequenceClassification with the real tokenizer at `path`
    (reused when its marker says it was built with the same settings)."""
    marker = path / "rerank_bench.json"
    settings = {"task": task, "seed": seed, **MINILM_L6}
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return path
    import torch
    from transformers import BertForSequenceClassification

    from ember.bench.tiny_models import CLASSIFY_LABELS, copy_tokenizer, tiny_config

    labels: dict[str, Any] = (
        {"num_labels": 1}
        if task == "rerank"
        else {
            "num_labels": len(CLASSIFY_LABELS),
            "id2label": dict(CLASSIFY_LABELS),
            "label2id": {v: k for k, v in CLASSIFY_LABELS.items()},
        }
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(**MINILM_L6, **labels))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    copy_tokenizer(path)
    marker.write_text(json.dumps(settings))
    return path


def count_parameters(path: Path) -> int:
    """Parameters in the folder's safetensors weights."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path / "model.safetensors"), framework="np") as weights:
        for name in weights.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            n = 1
            for dim in weights.get_slice(name).get_shape():
                n *= dim
            total += n
    return total


def prepare(model: Path, log: Path, extra: Sequence[str] = ()) -> float:
    """`ember prepare model` (a no-op when already cached) → seconds it took."""
    import subprocess

    start = time.perf_counter()
    with log.open("ab") as out:
        subprocess.run(
            [str(PY), "-m", "ember", "prepare", *extra, str(model)],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE_ENV},
        )
    return time.perf_counter() - start


# --- servers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """How to start one server and talk to it."""

    label: str
    argv: list[str]
    ready_path: str
    health_path: str
    routes: dict[str, tuple[str, Shape]]
    """route label → (path, body shape) of the rerank routes to load."""


def ember_server(
    models: Sequence[str], port: int, extra: Sequence[str], *, label: str = "ember"
) -> Server:
    argv = [str(PY), "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for model in models:
        argv += ["--model", model]
    routes: dict[str, tuple[str, Shape]] = {f"{label} /rerank": ("/rerank", "tei_rerank")}
    if label == "ember":
        routes["ember /v1/rerank"] = ("/v1/rerank", "v1_rerank")
    return Server(
        label=label,
        argv=[*argv, *extra],
        ready_path="/ready",
        health_path="/health",
        routes=routes,
    )


def infinity_server(model: Path, port: int, extra: Sequence[str]) -> Server:
    argv = [
        str(INFINITY_VENV / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(model),
        "--engine",
        "torch",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    return Server(
        label="infinity",
        argv=argv,
        ready_path="/health",  # no readiness route; the port opens after its warm-up
        health_path="/health",
        routes={"infinity /rerank": ("/rerank", "v1_rerank")},
    )


@dataclass(slots=True)
class Running:
    endpoint: Endpoint
    pid: int
    probes: Probes
    rss_mb: float | None


@contextmanager
def running(server: Server, port: int, log_path: Path, *, timeout: float) -> Iterator[Running]:
    """Spawn `server`, wait until ready, yield it; stop its process group on the way out."""
    endpoint = Endpoint("127.0.0.1", port)
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = spawn_server(server.argv, log=log, env={**os.environ, **OFFLINE_ENV})
        try:
            probes = asyncio.run(
                wait_ready(
                    endpoint,
                    proc,
                    t0=t0,
                    ready_path=server.ready_path,
                    health_path=server.health_path,
                    ready_timeout=timeout,
                )
            )
            yield Running(endpoint, proc.pid, probes, tree_rss_mb(proc.pid))
        finally:
            stop_server(proc)


# --- request bodies and checks ---------------------------------------------------------------


def rerank_body(shape: Shape, query: str, docs: list[str], *, raw: bool = False) -> bytes:
    """TEI `/rerank` or Cohere-style `/v1/rerank` (ember's and Infinity's `/rerank`)."""
    key = "texts" if shape == "tei_rerank" else "documents"
    payload: dict[str, Any] = {"query": query, key: docs}
    if raw:
        payload["raw_scores"] = True
    return orjson.dumps(payload)


def predict_body(texts: list[str], *, raw: bool = False) -> bytes:
    payload: dict[str, Any] = {"inputs": texts[0] if len(texts) == 1 else texts}
    if raw:
        payload["raw_scores"] = True
    return orjson.dumps(payload)


def parse_rerank(shape: Shape, body: bytes) -> Scores:
    """index → score of a rerank response; ValueError if it has another shape."""
    parsed = orjson.loads(body)
    if shape == "tei_rerank":
        if not isinstance(parsed, list):
            raise ValueError("TEI rerank response is not a list")
        return {int(item["index"]): float(item["score"]) for item in parsed}
    results = parsed.get("results") if isinstance(parsed, dict) else None
    if not isinstance(results, list):
        raise ValueError("rerank response has no results[]")
    return {int(item["index"]): float(item["relevance_score"]) for item in results}


def parse_predict(body: bytes, n: int) -> list[dict[str, float]]:
    """Per input label → score of a TEI `/predict` response for `n` inputs."""
    parsed = orjson.loads(body)
    rows = [parsed] if n == 1 else parsed
    if not isinstance(rows, list) or len(rows) != n:
        raise ValueError("predict response has the wrong number of inputs")
    return [{str(p["label"]): float(p["score"]) for p in row} for row in rows]


def response_count(shape: Shape, body: bytes, n: int) -> int:
    """How many items a 200 body answers (n when it is well formed), -1 if malformed."""
    try:
        if shape == "predict":
            return len(parse_predict(body, n))
        return len(parse_rerank(shape, body))
    except (ValueError, KeyError, TypeError):
        return -1


# --- closed-loop load ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    docs: int
    words: int
    query_words: int


async def _user(
    conn: HttpConnection,
    *,
    path: str,
    shape: Shape,
    make_body: Callable[[], bytes],
    n: int,
    deadline: float,
    tally: Tally,
) -> None:
    while time.perf_counter() < deadline:
        tally.issued += 1
        body = make_body()
        start = time.perf_counter()
        try:
            response = await conn.request("POST", path, body)
        except HttpError as exc:
            tally.error(exc.kind)
            continue
        ms = (time.perf_counter() - start) * 1000
        if response.status != 200:
            tally.error(str(response.status))
            if response.status == 429:
                await asyncio.sleep(0.05)  # no hot retry loop stealing the server's cores
            continue
        if response_count(shape, response.body, n) != n:
            tally.error("bad_body")
            continue
        tally.latencies_ms.append(ms)
        tally.embeddings += n


async def rerank_level(
    endpoint: Endpoint,
    *,
    path: str,
    shape: Shape,
    workload: Workload,
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int,
    rng: random.Random,
    request_timeout: float,
) -> dict[str, Any]:
    """One concurrency level of closed-loop rerank → req/s, docs/s, latency, errors, CPU."""
    conns = [
        HttpConnection(endpoint.host, endpoint.port, timeout=request_timeout)
        for _ in range(concurrency)
    ]
    meter = CpuMeter(server_pid)

    def make_body() -> bytes:
        query = make_text(rng, workload.query_words)
        return rerank_body(
            shape, query, [make_text(rng, workload.words) for _ in range(workload.docs)]
        )

    async def phase(seconds: float) -> Tally:
        tally = Tally()
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _user(
                    c,
                    path=path,
                    shape=shape,
                    make_body=make_body,
                    n=workload.docs,
                    deadline=deadline,
                    tally=tally,
                )
                for c in conns
            )
        )
        return tally

    try:
        await asyncio.gather(*(c.connect() for c in conns))
        if warmup > 0:
            await phase(warmup)
            # Fresh connections for the measured window: a user that finished its warm-up early
            # sat idle on its connection while the others finished theirs (seconds at c=32),
            # past uvicorn's 5 s keep-alive, and its next request would meet a closed socket.
            await asyncio.gather(*(c.connect() for c in conns))
        server0, machine0 = meter.server_times(), meter.machine_busy()
        client0, wall0 = time.process_time(), time.perf_counter()
        tally = await phase(duration)
        wall = time.perf_counter() - wall0
        client_cpu = time.process_time() - client0
        server_cpu = tree_cpu_delta(server0, meter.server_times())
        machine_cpu = meter.machine_busy() - machine0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    ok = len(tally.latencies_ms)
    return {
        "concurrency": concurrency,
        "requests": tally.issued,
        "ok": ok,
        "errors": tally.errors,
        "elapsed_s": round(wall, 3),
        "req_per_s": round(ok / wall, 3),
        "docs_per_s": round(tally.embeddings / wall, 2),
        "latency_ms": latency_summary(tally.latencies_ms),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "machine_cpu_pct": round(100 * machine_cpu / wall, 1),
        # Anything else on the machine in the window (another job, the kernel): the noise.
        "other_cpu_pct": round(100 * (machine_cpu - server_cpu - client_cpu) / wall, 1),
    }


# --- parity ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParitySet:
    query: str
    docs: list[str]
    texts: list[str]
    """Classifier inputs."""


def parity_set(seed: int = 7) -> ParitySet:
    """A fixed query and 32 documents of 3 to 150 words plus one past 512 tokens (truncated
    longest-first by both servers), and 8 classifier texts of varied lengths."""
    rng = random.Random(seed)
    lengths = [3 + (i * 149) // 30 for i in range(31)] + [600]
    return ParitySet(
        query=make_text(rng, 10),
        docs=[make_text(rng, n) for n in lengths],
        texts=[make_text(rng, n) for n in (1, 5, 12, 30, 60, 120, 250, 600)],
    )


async def fetch_rerank(
    endpoint: Endpoint, path: str, shape: Shape, ps: ParitySet
) -> dict[str, Scores]:
    """The parity set's scores from one rerank route: sigmoid and raw."""
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=120)
    out: dict[str, Scores] = {}
    try:
        for kind, raw in (("sigmoid", False), ("raw", True)):
            response = await conn.request(
                "POST", path, rerank_body(shape, ps.query, ps.docs, raw=raw)
            )
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {response.body[:200]!r}")
            out[kind] = parse_rerank(shape, response.body)
    finally:
        await conn.close()
    return out


async def fetch_predict(endpoint: Endpoint, ps: ParitySet) -> dict[str, list[dict[str, float]]]:
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=120)
    out: dict[str, list[dict[str, float]]] = {}
    try:
        for kind, raw in (("softmax", False), ("raw", True)):
            response = await conn.request("POST", "/predict", predict_body(ps.texts, raw=raw))
            if response.status != 200:
                raise RuntimeError(f"/predict: {response.status} {response.body[:200]!r}")
            out[kind] = parse_predict(response.body, len(ps.texts))
    finally:
        await conn.close()
    return out


def max_abs_diff(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    if a.keys() != b.keys():
        raise ValueError("score sets cover different indices")
    return max(abs(a[i] - b[i]) for i in a)


def spearman(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """Rank correlation of two score sets over the same indices (no ties expected)."""
    import numpy as np

    keys = sorted(a)
    ra = np.array([a[k] for k in keys]).argsort().argsort()
    rb = np.array([b[k] for k in keys]).argsort().argsort()
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


def top(scores: Mapping[int, float], k: int) -> set[int]:
    return set(sorted(scores, key=lambda i: -scores[i])[:k])


def parity_report(
    ps: ParitySet,
    reranker: Path,
    classifier: Path,
    rerank_scores: Mapping[str, Mapping[str, Scores]],
    predictions: Mapping[str, list[dict[str, float]]] | None,
) -> dict[str, Any]:
    """Max abs differences between every pair of sources (servers' routes and transformers)."""
    import numpy as np

    from ember.bench.tiny_models import CLASSIFY_LABELS, reference_logits, sigmoid, softmax

    logits = reference_logits(reranker, [ps.query] * len(ps.docs), ps.docs, max_length=512)[:, 0]
    sources: dict[str, dict[str, Scores]] = {
        "transformers": {
            "raw": {i: float(v) for i, v in enumerate(logits)},
            "sigmoid": {i: float(v) for i, v in enumerate(sigmoid(logits))},
        },
        **{name: dict(scores) for name, scores in rerank_scores.items()},
    }
    names = list(sources)
    pairs: dict[str, dict[str, float]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pairs[f"{a} vs {b}"] = {
                **{k: max_abs_diff(sources[a][k], sources[b][k]) for k in ("sigmoid", "raw")},
                "spearman": spearman(sources[a]["raw"], sources[b]["raw"]),
                "top5_overlap": len(top(sources[a]["raw"], 5) & top(sources[b]["raw"], 5)),
            }
    sig = sources["transformers"]["sigmoid"]
    report: dict[str, Any] = {
        "query": ps.query,
        "doc_words": [len(d.split()) for d in ps.docs],
        "rerank": {
            "score_range_sigmoid": [min(sig.values()), max(sig.values())],
            "logit_range": [float(logits.min()), float(logits.max())],
            "max_abs_diff": pairs,
            "scores": sources,
        },
    }
    if predictions is not None:
        ref = reference_logits(classifier, ps.texts, max_length=512)
        labels = [CLASSIFY_LABELS[j] for j in range(len(CLASSIFY_LABELS))]

        def matrix(rows: list[dict[str, float]]) -> Any:
            return np.array([[row[label] for label in labels] for row in rows], dtype=np.float64)

        report["classify"] = {
            "text_words": [len(t.split()) for t in ps.texts],
            "max_abs_diff": {
                "ember /predict vs transformers": {
                    "softmax": float(np.abs(matrix(predictions["softmax"]) - softmax(ref)).max()),
                    "raw": float(np.abs(matrix(predictions["raw"]) - ref).max()),
                }
            },
        }
    return report


# --- first request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestClass:
    """One first-request class: its route and a fresh body of the same shape on each call."""

    path: str
    shape: Shape
    n: int
    make_body: Callable[[random.Random], bytes]


def first_classes(workload: Workload) -> dict[str, RequestClass]:
    def rerank(docs: int) -> Callable[[random.Random], bytes]:
        return lambda rng: rerank_body(
            "tei_rerank",
            make_text(rng, workload.query_words),
            [make_text(rng, workload.words) for _ in range(docs)],
        )

    def predict(texts: int, words: int) -> Callable[[random.Random], bytes]:
        return lambda rng: predict_body([make_text(rng, words) for _ in range(texts)])

    return {
        "rerank 1x1": RequestClass("/rerank", "tei_rerank", 1, rerank(1)),
        f"rerank 1x{workload.docs}": RequestClass(
            "/rerank", "tei_rerank", workload.docs, rerank(workload.docs)
        ),
        "predict 1": RequestClass("/predict", "predict", 1, predict(1, 20)),
        "predict 32": RequestClass("/predict", "predict", 32, predict(32, 40)),
    }


@dataclass(slots=True)
class FirstResult:
    first_ms: float | None = None
    steady_median_ms: float | None = None
    idle_median_ms: float | None = None
    ratio: float | None = None
    ratio_idle: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


async def _timed(
    conn: HttpConnection, cls: RequestClass, rng: random.Random
) -> tuple[float, str | None]:
    body = cls.make_body(rng)
    start = time.perf_counter()
    try:
        response = await conn.request("POST", cls.path, body)
    except HttpError as exc:
        return (time.perf_counter() - start) * 1000, exc.kind
    ms = (time.perf_counter() - start) * 1000
    if response.status != 200:
        return ms, str(response.status)
    if response_count(cls.shape, response.body, cls.n) != cls.n:
        return ms, "bad_body"
    return ms, None


async def measure_first(
    endpoint: Endpoint, classes: Mapping[str, RequestClass], *, repeats: int, rng: random.Random
) -> dict[str, FirstResult]:
    """All first requests in class order, then per class `repeats` back-to-back and
    IDLE_REPEATS each after IDLE_GAP s of quiet (as in `ember bench startup`)."""
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=120)
    results = {name: FirstResult() for name in classes}
    try:
        for name, cls in classes.items():
            ms, error = await _timed(conn, cls, rng)
            if error:
                results[name].errors[error] = 1
            else:
                results[name].first_ms = round(ms, 3)
        for name, cls in classes.items():
            result = results[name]
            steady: list[float] = []
            idle: list[float] = []
            for _ in range(repeats):
                ms, error = await _timed(conn, cls, rng)
                if error:
                    result.errors[error] = result.errors.get(error, 0) + 1
                else:
                    steady.append(ms)
            for _ in range(IDLE_REPEATS):
                await asyncio.sleep(IDLE_GAP)
                ms, error = await _timed(conn, cls, rng)
                if error:
                    result.errors[error] = result.errors.get(error, 0) + 1
                else:
                    idle.append(ms)
            if steady:
                result.steady_median_ms = round(statistics.median(steady), 3)
            if idle:
                result.idle_median_ms = round(statistics.median(idle), 3)
            if result.first_ms is not None and result.steady_median_ms:
                result.ratio = round(result.first_ms / result.steady_median_ms, 3)
            if result.first_ms is not None and result.idle_median_ms:
                result.ratio_idle = round(result.first_ms / result.idle_median_ms, 3)
    finally:
        await conn.close()
    return results


# --- phases ----------------------------------------------------------------------------------


def run_load_phase(args: argparse.Namespace, reranker: Path, ps: ParitySet) -> dict[str, Any]:
    """Every server in turn, `--rounds` times: ready time, RSS, parity scores, load levels."""
    workload = Workload(args.docs, args.words, args.query_words)
    docs: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, Scores]] = {}
    rng = random.Random(args.seed)
    for round_ in range(args.rounds):
        for label in args.servers:
            port = free_port()
            ember_args = shlex.split(args.ember_args)
            if label == "ember-int8":
                ember_args += ["--quantize", "int8"]
            server = (
                infinity_server(reranker, port, shlex.split(args.infinity_args))
                if label == "infinity"
                else ember_server([str(reranker)], port, ember_args, label=label)
            )
            doc = docs.setdefault(
                label,
                {
                    "kind": "rerank-load",
                    "label": label,
                    "cmd": shlex.join(server.argv).replace(str(port), "{port}"),
                    "workload": asdict(workload),
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": machine_info(),
                    "starts": [],
                    "levels": [],
                },
            )
            log = args.out / f"load-{label}-round{round_}.log"
            print(f"== {label} round {round_}: starting ({log})", flush=True)
            with running(server, port, log, timeout=args.ready_timeout) as srv:
                doc["starts"].append(
                    {
                        "round": round_,
                        "ready_s": round(srv.probes.ready_seconds, 3),
                        "port_s": srv.probes.port_seconds,
                        "rss_mb_at_ready": srv.rss_mb,
                    }
                )
                print(f"   ready in {srv.probes.ready_seconds:.2f} s, RSS {srv.rss_mb} MiB")
                for route, (path, shape) in server.routes.items():
                    if round_ == 0:
                        parity[route] = asyncio.run(fetch_rerank(srv.endpoint, path, shape, ps))
                    for concurrency in args.concurrency:
                        level = asyncio.run(
                            rerank_level(
                                srv.endpoint,
                                path=path,
                                shape=shape,
                                workload=workload,
                                concurrency=concurrency,
                                duration=args.duration,
                                warmup=args.warmup,
                                server_pid=srv.pid,
                                rng=rng,
                                request_timeout=args.request_timeout,
                            )
                        )
                        level.update(round=round_, route=route)
                        doc["levels"].append(level)
                        _print_level(route, level)
    for label, doc in docs.items():
        write_json(doc, args.out / f"load-{label}.json")
    write_json(_str_keys(parity), args.out / "parity-scores.json")
    return {"docs": docs, "parity": parity}


def _print_level(route: str, level: Mapping[str, Any]) -> None:
    lat = level["latency_ms"]
    print(
        f"   {route:<18} c={level['concurrency']:<3} {level['req_per_s']:7.2f} req/s "
        f"{level['docs_per_s']:8.1f} docs/s  p50 {lat['p50']} p99 {lat['p99']} ms  "
        f"errors {level['errors'] or 0}  server CPU {level['server_cpu_pct']}%  "
        f"other {level['other_cpu_pct']}%",
        flush=True,
    )


def run_first_phase(
    args: argparse.Namespace, reranker: Path, classifier: Path, ps: ParitySet
) -> dict[str, Any]:
    """`--first-runs` fresh ember spawns serving both models; first vs steady per class."""
    workload = Workload(args.docs, args.words, args.query_words)
    classes = first_classes(workload)
    runs: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, float]]] | None = None
    cmd = ""
    for index in range(args.first_runs):
        port = free_port()
        server = ember_server(
            [f"reranker={reranker}", f"classifier={classifier}"], port, shlex.split(args.ember_args)
        )
        cmd = shlex.join(server.argv).replace(str(port), "{port}")
        log = args.out / f"first-ember-run{index}.log"
        with running(server, port, log, timeout=args.ready_timeout) as srv:
            meter = CpuMeter(srv.pid)
            server0, machine0 = meter.server_times(), meter.machine_busy()
            client0, wall0 = time.process_time(), time.perf_counter()
            results = asyncio.run(
                measure_first(
                    srv.endpoint, classes, repeats=args.repeats, rng=random.Random(1000 + index)
                )
            )
            wall = time.perf_counter() - wall0
            other = (
                meter.machine_busy()
                - machine0
                - tree_cpu_delta(server0, meter.server_times())
                - (time.process_time() - client0)
            )
            if predictions is None:
                predictions = asyncio.run(fetch_predict(srv.endpoint, ps))
        run = {
            "run": index,
            "ready_s": round(srv.probes.ready_seconds, 3),
            "rss_mb_at_ready": srv.rss_mb,
            "other_cpu_pct": round(100 * other / wall, 1),
            "classes": {name: asdict(r) for name, r in results.items()},
        }
        runs.append(run)
        cells = ", ".join(
            f"{name} {r.first_ms}/{r.steady_median_ms}/{r.idle_median_ms} ms "
            f"×{r.ratio} (idle ×{r.ratio_idle})"
            for name, r in results.items()
        )
        print(
            f"== first run {index}: ready {run['ready_s']} s, other CPU {run['other_cpu_pct']}%; "
            f"{cells}",
            flush=True,
        )
    worst = {
        name: {
            "worst_ratio": max((r["classes"][name]["ratio"] or 0.0) for r in runs),
            "worst_ratio_idle": max((r["classes"][name]["ratio_idle"] or 0.0) for r in runs),
        }
        for name in classes
    }
    doc = {
        "kind": "rerank-first",
        "label": "ember",
        "cmd": cmd,
        "repeats": args.repeats,
        "idle_repeats": IDLE_REPEATS,
        "idle_gap_s": IDLE_GAP,
        "classes": {name: {"path": c.path, "n": c.n} for name, c in classes.items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "runs": runs,
        "summary": worst,
        "parity_predictions": predictions,
    }
    write_json(doc, args.out / "first-ember.json")
    return {"doc": doc, "predictions": predictions}


def summarize(
    load: Mapping[str, Any] | None,
    first: Mapping[str, Any] | None,
    parity: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Medians over rounds per (route, concurrency), ember/Infinity ratios, worst first ratios."""
    out: dict[str, Any] = {}
    if load:
        table: dict[str, dict[int, dict[str, Any]]] = {}
        for doc in load["docs"].values():
            for level in doc["levels"]:
                table.setdefault(level["route"], {}).setdefault(
                    level["concurrency"], {}
                ).setdefault("levels", []).append(level)
        rows: dict[str, dict[str, Any]] = {}
        for route, by_c in table.items():
            for c, cell in sorted(by_c.items()):
                levels = cell["levels"]
                rows.setdefault(route, {})[str(c)] = {
                    "req_per_s": statistics.median(lv["req_per_s"] for lv in levels),
                    "docs_per_s": statistics.median(lv["docs_per_s"] for lv in levels),
                    "p50_ms": statistics.median(lv["latency_ms"]["p50"] or 0 for lv in levels),
                    "p99_ms": statistics.median(lv["latency_ms"]["p99"] or 0 for lv in levels),
                    "errors": sum(sum(lv["errors"].values()) for lv in levels),
                    "rounds": len(levels),
                }
        out["load"] = rows
        base = rows.get("infinity /rerank")
        if base:
            out["ratio_vs_infinity"] = {
                route: {
                    c: round(cell["req_per_s"] / base[c]["req_per_s"], 2)
                    for c, cell in cells.items()
                    if c in base and base[c]["req_per_s"]
                }
                for route, cells in rows.items()
                if route != "infinity /rerank"
            }
        out["ready_s"] = {
            label: [s["ready_s"] for s in doc["starts"]] for label, doc in load["docs"].items()
        }
        out["rss_mb_at_ready"] = {
            label: [s["rss_mb_at_ready"] for s in doc["starts"]]
            for label, doc in load["docs"].items()
        }
    if first:
        out["first"] = first["doc"]["summary"]
    if parity:
        out["parity_max_abs_diff"] = {
            "rerank": parity["rerank"]["max_abs_diff"],
            **({"classify": parity["classify"]["max_abs_diff"]} if "classify" in parity else {}),
        }
    return out


def print_markdown(summary: Mapping[str, Any]) -> None:
    if "load" in summary:
        print("\n| route | c | req/s | docs/s | p50 ms | p99 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for route, cells in summary["load"].items():
            for c, cell in cells.items():
                print(
                    f"| {route} | {c} | {cell['req_per_s']:.2f} | {cell['docs_per_s']:.0f} | "
                    f"{cell['p50_ms']:.0f} | {cell['p99_ms']:.0f} | {cell['errors']} |"
                )
        for route, ratios in summary.get("ratio_vs_infinity", {}).items():
            print(f"{route} / infinity: " + ", ".join(f"c={c} {r}x" for c, r in ratios.items()))
    if "first" in summary:
        for name, worst in summary["first"].items():
            ratio, idle = worst["worst_ratio"], worst["worst_ratio_idle"]
            print(f"first {name}: worst ×{ratio} (idle-matched ×{idle})")
    if "parity_max_abs_diff" in summary:
        print(json.dumps(summary["parity_max_abs_diff"], indent=2))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="cross-encoder folder (default: build one)")
    p.add_argument("--classifier", type=Path, help="classifier folder (default: build one)")
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/ember-rerank-bench"), help="where built models go"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu-rerank")
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"load phase: {','.join(SERVERS)}")
    p.add_argument("--rounds", type=int, default=1, help="load phase: alternate servers N times")
    p.add_argument("--concurrency", type=parse_concurrency, default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    p.add_argument("--docs", type=int, default=32, help="documents per rerank request")
    p.add_argument("--words", type=int, default=60, help="words per document")
    p.add_argument("--query-words", type=int, default=10)
    p.add_argument("--first-runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20, help="back-to-back repeats per class")
    p.add_argument(
        "--ember-args",
        default="--max-concurrent-requests 2048",
        help="extra `ember serve` flags (the default queue bound, 512 inputs, is below 32 × 32)",
    )
    p.add_argument("--infinity-args", default="", help="extra `infinity_emb v2` flags")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.phases = [x for x in args.phases.split(",") if x]
    args.servers = [x for x in args.servers.split(",") if x]
    if unknown := set(args.phases) - set(PHASES):
        p.error(f"unknown phases {sorted(unknown)}")
    if unknown := set(args.servers) - set(SERVERS):
        p.error(f"unknown servers {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reranker = args.model or args.work / "reranker-minilm-l6-random"
    classifier = args.classifier or args.work / "classifier-minilm-l6-random"
    if "build" in args.phases:
        if args.model is None:
            build_model(reranker, task="rerank", seed=0)
        if args.classifier is None:
            build_model(classifier, task="classify", seed=1)
        write_json(
            {
                "reranker": str(reranker),
                "classifier": str(classifier),
                "config": MINILM_L6 if args.model is None else None,
                "reranker_parameters": count_parameters(reranker),
                "classifier_parameters": count_parameters(classifier),
            },
            args.out / "models.json",
        )
    if "prepare" in args.phases:
        for model in (reranker, classifier):
            seconds = prepare(model, args.out / "prepare.log")
            print(f"== ember prepare {model}: {seconds:.1f} s", flush=True)
        seconds = prepare(reranker, args.out / "prepare.log", ["--quantize", "int8"])
        print(f"== ember prepare --quantize int8 {reranker}: {seconds:.1f} s", flush=True)
    ps = parity_set()
    load = run_load_phase(args, reranker, ps) if "load" in args.phases else None
    first = run_first_phase(args, reranker, classifier, ps) if "first" in args.phases else None
    parity = None
    if "parity" in args.phases:
        scores_path, first_path = args.out / "parity-scores.json", args.out / "first-ember.json"
        scores = load["parity"] if load else _read_json(scores_path)
        predictions = (
            first["predictions"]
            if first
            else _read_json(first_path).get("parity_predictions")
            if first_path.exists()
            else None
        )
        rerank_scores = {
            route: {kind: {int(i): v for i, v in by_index.items()} for kind, by_index in s.items()}
            for route, s in scores.items()
        }
        parity = parity_report(ps, reranker, classifier, rerank_scores, predictions)
        write_json(_str_keys(parity), args.out / "parity.json")
    summary_path = args.out / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else {}
    summary.update(summarize(load, first, parity))
    summary.update(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        argv=sys.argv,
        machine=machine_info(),
    )
    write_json(summary, summary_path)
    print_markdown(summary)


def _str_keys(value: Any) -> Any:
    """`value` with every dict key a string (JSON objects; orjson refuses int keys)."""
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    return value


def _read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


if __name__ == "__main__":
    main()
