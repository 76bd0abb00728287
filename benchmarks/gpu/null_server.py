"""ember with a backend that costs nothing: the ceiling of one process's HTTP + engine path.

The backend returns zeros of the model's width at once, so what a load test measures against this
server is everything but the model: HTTP parsing, validation, tokenisation, batching, padding,
normalisation and JSON. Run on the GPU machine next to the real server, it tells how much of the
real server's time per request the GPU is not responsible for.

    python benchmarks/gpu/null_server.py --port 8090 [--model DIR] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
from typing import Any

import numpy as np

from ember.backends.base import GPU_SEQ, Batch, Capabilities, FloatArray
from ember.models import ModelSpec, Task
from ember.settings import Settings


class NullBackend:
    name = "null"

    def __init__(self, spec: ModelSpec, *, gpu_buckets: bool) -> None:
        self.width = (
            (spec.hidden_size or 8) if spec.task is Task.EMBED else max(len(spec.labels), 1)
        )
        # Batches like the CUDA backends (coarse lengths, padded rows) or like onnx on CPU.
        self.capabilities = (
            Capabilities(
                device="cuda",
                lengths="coarse",
                seq_buckets=GPU_SEQ,
                pads_rows=True,
                output_width=self.width,
                max_batch_tokens=32768,
                max_batch_rows=256,
            )
            if gpu_buckets
            else Capabilities(device="cpu", lengths="exact", warm="cover", output_width=self.width)
        )

    def run(self, batch: Batch) -> FloatArray:
        out = np.zeros((batch.shape[0], self.width), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "none", "dtype": "float32", "threads": None}

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--gpu-buckets", action="store_true", help="GPU bucket defaults")
    parser.add_argument("--profile", default=None, help="write cProfile stats here at exit")
    args = parser.parse_args()

    from ember import logs
    from ember.engine.registry import Engines
    from ember.http.app import create_app
    from ember.http.serving import run

    settings = Settings(host="127.0.0.1", port=args.port, model=[args.model], log_level="warning")
    logs.setup(level="warning", json_logs=False, secrets=[])
    engines = Engines(
        settings,
        backend_factory=lambda spec, _s: NullBackend(spec, gpu_buckets=args.gpu_buckets),
    )
    app = create_app(settings, engines=engines)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()

        def dump(*_: object) -> None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            sys.exit(0)

        signal.signal(signal.SIGUSR1, dump)
    run(app, settings)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
