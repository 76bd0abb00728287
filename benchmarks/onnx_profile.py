"""Where an artifact's graph spends its time, without HTTP: the median of plain runs per shape,
then ONNX Runtime's profiler summed by op type (the profiler adds ~10 %).

    .venv/bin/python benchmarks/onnx_profile.py ARTIFACT_DIR [--shapes 32x48,1x48] [--runs 30]

Run it once per artifact, alternating the artifacts being compared a few times (a fresh process
each): `onnx_notes.md` "int8: where the time goes" came from this.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ember.backends.artifact import MODEL_FILE
from ember.backends.onnx_backend import DISABLED_OPTIMIZERS, session_options


def feeds(rows: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, 30000, (rows, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids * 0}


def session(model: Path, threads: int, profile_dir: str | None) -> ort.InferenceSession:
    options = session_options(threads=threads, level=0)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = f"{profile_dir}/ort"
    return ort.InferenceSession(
        str(model), options, ["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--shapes", default="32x48,1x48")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = args.artifact / MODEL_FILE
    rng = np.random.default_rng(0)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    batches = {s: feeds(*s, rng) for s in shapes}
    plain = session(model, args.threads, None)
    out: dict[str, object] = {}
    for shape, feed in batches.items():
        for _ in range(5):
            plain.run(None, feed)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            plain.run(None, feed)
            times.append(time.perf_counter() - t0)
        out[f"{shape[0]}x{shape[1]}"] = {"median_ms": round(statistics.median(times) * 1e3, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        for shape, feed in batches.items():  # one profiled session per shape: no bracketing
            profiled = session(model, args.threads, tmp)
            for _ in range(3):
                profiled.run(None, feed)
            for _ in range(10):
                profiled.run(None, feed)
            events = json.loads(Path(profiled.end_profiling()).read_text())
            runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
            after_warmup = runs[3]
            kernels: collections.Counter[str] = collections.Counter()
            for e in events:
                node = e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                if node and e["ts"] >= after_warmup:
                    kernels[e["args"]["op_name"]] += e["dur"]
            total = sum(kernels.values())
            entry = out[f"{shape[0]}x{shape[1]}"]
            assert isinstance(entry, dict)
            entry["by_op"] = {
                op: {"ms_per_run": round(d / 10 / 1e3, 3), "share": round(d / total, 3)}
                for op, d in kernels.most_common()
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
