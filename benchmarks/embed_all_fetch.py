"""Is fetching `last_hidden_state` (TEI's /embed_all) a cold run once the pooled output ran?

Opens a prepared artifact's graph with serving's session options and times, per output, the
warm-up's covering shapes then the same again and one other shape: if the first fetch of the
per-token output at a shape costs what its later runs cost, warming it at every shape buys
nothing (session 18, RESULTS.md).

    .venv/bin/python benchmarks/embed_all_fetch.py ~/.cache/ember/onnx/<artifact> [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ember.backends.ort_session import create_session, serving_level
from ember.manifest import MODEL_FILE, TOKEN_OUTPUT, load_manifest

SHAPES = [(4, 256), (1, 256), (1, 2), (4, 256), (1, 256), (8, 64), (8, 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    manifest = load_manifest(args.artifact)
    session = create_session(
        args.artifact / MODEL_FILE,
        threads=args.threads,
        level=serving_level(manifest.options.optimize),
    )
    names = [i.name for i in session.get_inputs()]
    rng = np.random.default_rng(0)
    rows = []
    for output in (manifest.output, TOKEN_OUTPUT, manifest.output):
        for r, n in SHAPES:
            ids = rng.integers(1000, 20000, size=(r, n), dtype=np.int64)
            arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            arrays["token_type_ids"] = np.zeros_like(ids)
            t0 = time.perf_counter()
            session.run([output], {k: arrays[k] for k in names})
            rows.append({"output": output, "shape": [r, n], "ms": (time.perf_counter() - t0) * 1e3})
            print(f"{output:18} {r}x{n:<4} {rows[-1]['ms']:8.1f} ms")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
