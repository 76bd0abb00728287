"""Is any shape still cold after the CPU `cover` warm-up plan? Runs every shape of the set.

Builds the engine's real buckets and ONNX backend for the built-in model (prepared artifact
from the cache), runs the `cover` plan exactly as warm-up does, then for every other shape of
the set: its first run against the median of its next three, in wall time and in this
process's CPU time (which a busy neighbour on a shared machine does not inflate).

    .venv/bin/python benchmarks/cold_shapes.py [--out benchmarks/results/cold_shapes.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ember.backends.base import Batch
from ember.backends.onnx_backend import OnnxBackend
from ember.engine.buckets import Buckets
from ember.engine.warmup import plan_shapes
from ember.models import inspect_model
from ember.settings import Settings


def batch(rows: int, seq: int, rng: np.random.Generator) -> Batch:
    ids = rng.integers(1000, 20000, size=(rows, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    ones = np.ones((rows, seq), dtype=np.int64)
    return Batch(input_ids=ids, attention_mask=ones, token_type_ids=ones * 0, real_rows=rows)


def timed(backend: OnnxBackend, b: Batch) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    backend.run(b)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_shapes.json"))
    args = parser.parse_args()
    settings = Settings()
    spec = inspect_model("builtin")
    backend = OnnxBackend.for_model(spec=spec, settings=settings, device="cpu")
    buckets = Buckets.build(
        max_length=spec.max_length,
        seq_buckets=settings.seq_buckets,
        row_buckets=settings.row_buckets,
        max_tokens=settings.max_batch_tokens or 1024,
        max_rows=settings.max_batch_requests or 32,
    )
    rng = np.random.default_rng(0)
    plan = plan_shapes(buckets, "cover")
    for shape in plan:
        timed(backend, batch(*shape, rng))
    rows = []
    for shape in buckets.shapes():
        if shape in plan:
            continue
        first = timed(backend, batch(*shape, rng))
        later = [timed(backend, batch(*shape, rng)) for _ in range(3)]
        steady_wall = statistics.median(w for w, _ in later)
        steady_cpu = statistics.median(c for _, c in later)
        rows.append(
            {
                "rows": shape[0],
                "seq": shape[1],
                "first_ms": round(first[0] * 1000, 3),
                "steady_ms": round(steady_wall * 1000, 3),
                "wall_ratio": round(first[0] / steady_wall, 3),
                "cpu_ratio": round(first[1] / max(steady_cpu, 1e-9), 3),
            }
        )
    wall = [r["wall_ratio"] for r in rows]
    cpu = [r["cpu_ratio"] for r in rows]
    summary = {
        "plan": [list(s) for s in plan],
        "shape_set": len(buckets.shapes()),
        "checked": len(rows),
        "wall_ratio_median": round(statistics.median(wall), 3),
        "wall_ratio_p95": round(float(np.percentile(wall, 95)), 3),
        "wall_ratio_max": max(wall),
        "cpu_ratio_median": round(statistics.median(cpu), 3),
        "cpu_ratio_p95": round(float(np.percentile(cpu, 95)), 3),
        "cpu_ratio_max": max(cpu),
        "worst": sorted(rows, key=lambda r: -r["cpu_ratio"])[:5],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "shapes": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
