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
summary.json), server logs beside them; a markdown summary on stdout. The load is `ember bench
load`'s one closed loop (ember.bench.load) over rerank workloads (ember.bench.workloads), the
first-request phase `ember bench startup`'s measure_classes over rerank and classify workloads;
CPU figures are percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from rerank_report import (  # benchmarks/, beside this script
    Scores,
    fetch_scores,
    parity_report,
    parity_set,
    print_markdown,
    summarize,
)

from ember.bench.load import LoadConfig, parse_concurrency, run_level, write_json
from ember.bench.process import free_port, running
from ember.bench.startup import IDLE_GAP, IDLE_REPEATS, machine_info, measure_classes
from ember.bench.workloads import (
    Classify,
    Rerank,
    RerankShape,
    Workload,
    parse_predict,
    parse_rerank,
    predict_body,
    rerank_body,
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

    labels: dict[str, Any] = {"num_labels": 1}
    if task == "classify":
        labels = {
            "num_labels": len(CLASSIFY_LABELS),
            "id2label": dict(CLASSIFY_LABELS),
            "label2id": {v: k for k, v in CLASSIFY_LABELS.items()},
        }
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
            total += math.prod(weights.get_slice(name).get_shape())
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


def server_argv(label: str, models: Sequence[str], port: int, extra: Sequence[str]) -> list[str]:
    """How to start `label` (one of SERVERS) on `port`."""
    if label == "infinity":
        return [
            str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id", models[0],
            "--engine", "torch", "--host", "127.0.0.1", "--port", str(port), *extra,
        ]  # fmt: skip
    argv = [str(PY), "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for model in models:
        argv += ["--model", model]
    return [*argv, *extra]


def rerank_routes(label: str) -> dict[str, tuple[str, RerankShape]]:
    """route label → (path, body shape) of the rerank routes loaded on `label`."""
    if label == "infinity":
        return {"infinity /rerank": ("/rerank", "cohere")}
    routes: dict[str, tuple[str, RerankShape]] = {f"{label} /rerank": ("/rerank", "tei")}
    if label == "ember":
        routes["ember /v1/rerank"] = ("/v1/rerank", "cohere")
    return routes


# --- phases ----------------------------------------------------------------------------------


def run_load_phase(
    args: argparse.Namespace, reranker: Path, ps: Mapping[str, Any]
) -> dict[str, Any]:
    """Every server in turn, `--rounds` times: ready time, RSS, parity scores, load levels."""
    docs: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, Scores]] = {}
    rng = random.Random(args.seed)
    for round_ in range(args.rounds):
        for label in args.servers:
            port = free_port()
            extra = shlex.split(args.infinity_args if label == "infinity" else args.ember_args)
            if label == "ember-int8":
                extra += ["--quantize", "int8"]
            argv = server_argv(label, [str(reranker)], port, extra)
            doc = docs.setdefault(label, {
                "kind": "rerank-load", "label": label,
                "cmd": shlex.join(argv).replace(str(port), "{port}"),
                "workload": asdict(Rerank(docs=args.docs, words=args.words,
                                          query_words=args.query_words)),
                "duration_s": args.duration, "warmup_s": args.warmup,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine_info(), "starts": [], "levels": [],
            })  # fmt: skip
            log = args.out / f"load-{label}-round{round_}.log"
            print(f"== {label} round {round_}: starting ({log})", flush=True)
            ready_path = "/health" if label == "infinity" else "/ready"  # its port opens warm
            with running(
                argv, port=port, log_path=log, ready_path=ready_path,
                ready_timeout=args.ready_timeout, env={**os.environ, **OFFLINE_ENV},
            ) as srv:  # fmt: skip
                doc["starts"].append({
                    "round": round_, "ready_s": round(srv.probes.ready_seconds, 3),
                    "port_s": srv.probes.port_seconds, "rss_mb_at_ready": srv.rss_mb,
                })  # fmt: skip
                print(f"   ready in {srv.probes.ready_seconds:.2f} s, RSS {srv.rss_mb} MiB")
                for route, (path, shape) in rerank_routes(label).items():
                    if round_ == 0:
                        parity[route] = asyncio.run(fetch_scores(
                            srv.endpoint, path,
                            lambda raw, s=shape: rerank_body(s, ps["query"], ps["docs"], raw=raw),
                            lambda body, s=shape: parse_rerank(s, body),
                        ))  # fmt: skip
                    workload = Rerank(
                        shape=shape, docs=args.docs, words=args.words,
                        query_words=args.query_words, path=path,
                    )  # fmt: skip
                    for concurrency in args.concurrency:
                        config = LoadConfig(
                            endpoint=srv.endpoint, workload=workload, duration=args.duration,
                            warmup=args.warmup, server_pid=srv.pid, timeout=args.request_timeout,
                            batch=args.docs, label=label,
                        )  # fmt: skip
                        level = asyncio.run(run_level(config, concurrency, rng))
                        level.update(round=round_, route=route, docs_per_s=level["emb_per_s"])
                        doc["levels"].append(level)
                        lat = level["latency_ms"]
                        print(
                            f"   {route:<18} c={concurrency:<3} {level['req_per_s']:7.2f} req/s "
                            f"{level['docs_per_s']:8.1f} docs/s  p50 {lat['p50']} p99 "
                            f"{lat['p99']} ms  errors {level['errors'] or 0}  server CPU "
                            f"{level['server_cpu_pct']}%  other {level['other_cpu_pct']}%",
                            flush=True,
                        )
    for label, doc in docs.items():
        write_json(doc, args.out / f"load-{label}.json")
    write_json(_str_keys(parity), args.out / "parity-scores.json")
    return {"docs": docs, "parity": parity}


def first_classes(args: argparse.Namespace) -> dict[str, Workload]:
    """Issue 5's first-request classes on a server serving the reranker and the classifier."""
    rerank = {"words": args.words, "query_words": args.query_words}
    return {
        "rerank 1x1": Rerank(docs=1, **rerank),
        f"rerank 1x{args.docs}": Rerank(docs=args.docs, **rerank),
        "predict 1": Classify(texts=1, words=20),
        "predict 32": Classify(texts=32, words=40),
    }


def run_first_phase(
    args: argparse.Namespace, reranker: Path, classifier: Path, ps: Mapping[str, Any]
) -> dict[str, Any]:
    """`--first-runs` fresh ember spawns serving both models; first vs steady per class."""
    classes = first_classes(args)
    runs: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, float]]] | None = None
    cmd = ""
    n = len(ps["texts"])
    for index in range(args.first_runs):
        port = free_port()
        models = [f"reranker={reranker}", f"classifier={classifier}"]
        argv = server_argv("ember", models, port, shlex.split(args.ember_args))
        cmd = shlex.join(argv).replace(str(port), "{port}")
        log = args.out / f"first-ember-run{index}.log"
        with running(argv, port=port, log_path=log, ready_timeout=args.ready_timeout) as srv:
            results = asyncio.run(measure_classes(
                srv.endpoint, classes, repeats=args.repeats, rng=random.Random(1000 + index)
            ))  # fmt: skip
            if predictions is None:
                predictions = asyncio.run(fetch_scores(
                    srv.endpoint, "/predict", lambda raw: predict_body(ps["texts"], raw=raw),
                    lambda body: parse_predict(body, n),
                ))  # fmt: skip
                predictions["softmax"] = predictions.pop("sigmoid")
        run = {
            "run": index,
            "ready_s": round(srv.probes.ready_seconds, 3),
            "rss_mb_at_ready": srv.rss_mb,
            "classes": {name: asdict(r) for name, r in results.items()},
        }
        runs.append(run)
        cells = ", ".join(
            f"{name} {r.first_ms}/{r.steady_median_ms}/{r.idle_median_ms} ms ×{r.ratio} "
            f"(idle ×{r.ratio_idle})"
            for name, r in results.items()
        )
        print(f"== first run {index}: ready {run['ready_s']} s; {cells}", flush=True)
    worst = {
        name: {
            key: max((r["classes"][name][field] or 0.0) for r in runs)
            for key, field in (("worst_ratio", "ratio"), ("worst_ratio_idle", "ratio_idle"))
        }
        for name in classes
    }
    doc = {
        "kind": "rerank-first", "label": "ember", "cmd": cmd, "repeats": args.repeats,
        "idle_repeats": IDLE_REPEATS, "idle_gap_s": IDLE_GAP,
        "classes": {name: c.describe() for name, c in classes.items()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
        "runs": runs, "summary": worst, "parity_predictions": predictions,
    }  # fmt: skip
    write_json(doc, args.out / "first-ember.json")
    return {"doc": doc, "predictions": predictions}


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
