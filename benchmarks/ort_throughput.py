"""Texts per second of ONNX graphs under ember's session options, no HTTP: which graph and which
thread layout (intra-op threads x concurrent callers) computes the most on this machine.

    flock /tmp/ember-cpu.lock .venv/bin/python benchmarks/ort_throughput.py \
        --graph fused=ARTIFACT/model.onnx --graph unfused=/tmp/u/model.onnx:2 \
        --layout 2x1 --layout 1x2 --shape 32x45 --seconds 4 --rounds 5

`--graph NAME=PATH[:LEVEL]` (LEVEL: the ORT optimisation level the session applies, default 0,
as ember serves a prepared graph; suffix `a`: ORT's AttentionFusion off, `s`: intra-op threads
spin between ops, ORT's default that ember turns off; e.g. `:2a`, `:0s`);
`--layout TxC`: one session with T intra-op threads, run by C Python threads at once, each with
its own batch of the shape (C batches in flight: what a second inference thread would do).
Every (graph, layout) runs `--seconds` per round; rounds alternate all of them, so drift falls
on each. Prints the median texts/s and the per-run milliseconds of each, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ember.backends.ort_session import DISABLED_OPTIMIZERS, session_options


def feeds(rows: int, seq: int, names: list[str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (rows, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids * 0}
    return {n: arrays[n] for n in names}


def open_session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    disabled = list(DISABLED_OPTIMIZERS)
    if "a" in level:
        disabled.append("AttentionFusion")
    options = session_options(threads=threads, level=int(level.strip("as")))
    if "s" in level:  # ORT's default, which ember turns off
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(
        str(path), options, ["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def measure(
    session: ort.InferenceSession, callers: int, shape: tuple[int, int], seconds: float
) -> tuple[float, float, float]:
    """(texts/s, median ms per run, texts per CPU second of this process) with `callers`
    threads running batches back to back. Texts per CPU second hardly moves when other jobs
    take cores; texts/s does."""
    names = [i.name for i in session.get_inputs()]
    batches = [feeds(*shape, names, seed) for seed in range(callers)]
    for batch in batches:
        session.run(None, batch)
    runs: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def caller(batch: dict[str, np.ndarray]) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            session.run(None, batch)
            with lock:
                runs.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(b,)) for b in batches]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    texts = len(runs) * shape[0]
    return texts / wall, statistics.median(runs) * 1e3, texts / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="append", required=True, help="NAME=PATH[:LEVEL]")
    parser.add_argument("--layout", action="append", default=[], help="TxC (default 2x1)")
    parser.add_argument("--shape", default="32x45", help="rows x tokens of each batch")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows, seq = (int(x) for x in args.shape.split("x"))
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in args.layout or ["2x1"]]
    sessions: dict[str, tuple[ort.InferenceSession, int]] = {}
    for spec in args.graph:
        name, _, rest = spec.partition("=")
        path, _, level = rest.partition(":")
        for threads, callers in layouts:
            key = f"{name} {threads}x{callers}"
            sessions[key] = (open_session(Path(path), level or "0", threads), callers)
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for key, (session, callers) in sessions.items():
            results[key].append(measure(session, callers, (rows, seq), args.seconds))
    out = {
        key: {
            "texts_per_s": round(statistics.median(r[0] for r in runs), 1),
            "ms_per_run": round(statistics.median(r[1] for r in runs), 1),
            "texts_per_cpu_s": round(statistics.median(r[2] for r in runs), 2),
            "rounds": [round(r[0], 1) for r in runs],
        }
        for key, runs in results.items()
    }
    print(json.dumps({"shape": args.shape, "results": out}, indent=1))


if __name__ == "__main__":
    main()
