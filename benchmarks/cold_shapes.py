"""Is any shape still cold after the CPU warm-up plan? Runs every shape of the set.

Loads the built-in model as the engine does (`load_model`: prepared artifact from the cache, the
engine's buckets), runs the warm-up plan the engine would choose (or `--plan`), then for every
other shape of the set: its first run against the median of its later runs, in wall time and in
this process's CPU time (which a busy neighbour on a shared machine inflates less). As a noise
control, the first of the later runs is also compared with the median of the rest: a shape that
is already warm, measured the same way, so the control's spread is what noise alone does.

    .venv/bin/python benchmarks/cold_shapes.py [--out FILE] [--plan auto|cover|full|4x256,1x2]
        [--every N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import Backend, Batch
from ember.backends.loader import create_backend
from ember.engine.loaded import load_model
from ember.engine.warmup import choose_plan, plan_shapes
from ember.models import inspect_model
from ember.settings import Settings

LATER = 4
"""Runs after the first: the first of them is the control, the median of the rest is steady."""


def batch(rows: int, seq: int, rng: np.random.Generator) -> Batch:
    ids = rng.integers(1000, 20000, size=(rows, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    ones = np.ones((rows, seq), dtype=np.int64)
    return Batch(input_ids=ids, attention_mask=ones, token_type_ids=ones * 0, real_rows=rows)


def timed(backend: Backend, b: Batch) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    backend.run(b)
    return time.perf_counter() - wall, time.process_time() - cpu


def parse_plan(text: str) -> list[tuple[int, int]]:
    """`4x256,1x2` → [(4, 256), (1, 2)]."""
    shapes = []
    for part in text.split(","):
        rows, seq = part.lower().split("x")
        shapes.append((int(rows), int(seq)))
    return shapes


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "max": round(max(values), 3),
        "over_1.25": sum(v > 1.25 for v in values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_shapes.json"))
    parser.add_argument(
        "--plan",
        default="auto",
        help="auto|cover|full (as --warmup-plan), or shapes like 4x256,1x2 (default: auto)",
    )
    parser.add_argument("--every", type=int, default=1, help="check every Nth shape of the set")
    args = parser.parse_args()
    settings = Settings()
    spec = inspect_model("builtin")
    loaded = load_model(spec=spec, settings=settings, backend_factory=create_backend)
    backend, buckets = loaded.backend, loaded.buckets
    if args.plan in ("auto", "cover", "full"):
        plan = plan_shapes(buckets, choose_plan(args.plan, backend.capabilities))
    else:
        plan = parse_plan(args.plan)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    warm = [timed(backend, batch(*shape, rng))[0] for shape in plan]
    warm_seconds = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    for shape in buckets.shapes()[:: args.every]:
        if shape in plan:
            continue
        first = timed(backend, batch(*shape, rng))
        later = [timed(backend, batch(*shape, rng)) for _ in range(LATER)]
        steady_wall = statistics.median(w for w, _ in later[1:])
        steady_cpu = statistics.median(c for _, c in later[1:])
        rows.append(
            {
                "rows": shape[0],
                "seq": shape[1],
                "first_ms": round(first[0] * 1000, 3),
                "steady_ms": round(steady_wall * 1000, 3),
                "wall_ratio": round(first[0] / steady_wall, 3),
                "cpu_ratio": round(first[1] / max(steady_cpu, 1e-9), 3),
                "control_wall_ratio": round(later[0][0] / steady_wall, 3),
                "control_cpu_ratio": round(later[0][1] / max(steady_cpu, 1e-9), 3),
            }
        )
    summary = {
        "plan": [list(s) for s in plan],
        "plan_seconds": round(warm_seconds, 4),
        "plan_shape_ms": [round(w * 1000, 2) for w in warm],
        "shape_set": len(buckets.shapes()),
        "checked": len(rows),
        "every": args.every,
        "threads": settings.intra_op_threads(),
        **{
            f"{kind}_ratio": spread([r[f"{kind}_ratio"] for r in rows])
            for kind in ("wall", "cpu", "control_wall", "control_cpu")
        },
        "worst": sorted(rows, key=lambda r: -r["cpu_ratio"])[:5],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "shapes": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
