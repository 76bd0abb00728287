"""Where a GPU start spends its time, one phase after another in a fresh interpreter per probe
(no overlap, so each figure is the phase alone; the server overlaps some of them).

    PYTHONPATH=src python benchmarks/gpu/startup_split.py --model DIR [--probe cupy|torch|engine]

Probes (each a subprocess of this script, JSON on stdout, seconds):
- cupy: import numpy, ember's backend modules, cupy; CUDA context; cuBLAS; kernels from the
  cache; safetensors read; weights to the device (the CupyBackend steps, by hand).
- torch: import torch, CUDA context, import transformers, TorchBackend (model build + weights).
- engine: the real path without HTTP: Engines.preload (load) then start (warm-up), and the
  warm-up report (shapes, first shape, capture totals).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self.last, 4)
        self.last = now


def probe_cupy(model: Path) -> dict[str, float]:
    c = Clock()
    import numpy as np

    c.lap("import numpy")
    from ember.backends import cupy_backend  # noqa: F401
    from ember.models import inspect_model

    c.lap("import ember backend modules")
    import cupy as cp

    c.lap("import cupy")
    cp.cuda.Device(0).use()
    cp.cuda.runtime.free(cp.cuda.runtime.malloc(1))
    c.lap("CUDA context (first malloc)")
    from ember.backends.cublas import WORKSPACE_BYTES, Cublas

    stream = cp.cuda.Stream(non_blocking=True)
    ws = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
    cp.cuda.device.get_cublas_handle()
    blas = Cublas(stream=stream.ptr, workspace=ws.data.ptr)
    c.lap("cuBLAS handle")
    from ember.backends.cuda_kernels import Kernels

    kernels = Kernels.compile()
    c.lap("kernels (cache)")
    spec = inspect_model(str(model))
    c.lap("inspect model")
    from safetensors.numpy import load_file

    host = load_file(str(model / "model.safetensors"))
    c.lap("safetensors read")
    from ember.backends.bert import supported
    from ember.backends.cupy_encoder import CupyEncoder

    config = supported(spec)
    assert config is not None
    with stream:
        CupyEncoder(
            cp=cp, config=config, host_weights=host, task=spec.task, pooling=spec.pooling,
            width=config.hidden, kernels=kernels, blas=blas,
        )  # fmt: skip
    stream.synchronize()
    c.lap("weights to device")
    c.phases["bytes"] = float(sum(v.nbytes for v in host.values()))
    del np
    return c.phases


def probe_torch(model: Path) -> dict[str, float]:
    c = Clock()
    import torch

    c.lap("import torch")
    torch.zeros(1, device="cuda")
    c.lap("CUDA context")
    import transformers  # noqa: F401

    c.lap("import transformers")
    from transformers import AutoModel  # noqa: F401

    c.lap("from transformers import AutoModel")
    from ember.backends.torch_backend import TorchBackend
    from ember.models import inspect_model

    spec = inspect_model(str(model))
    c.lap("import ember + inspect")
    TorchBackend(spec=spec, device="cuda", dtype="auto")
    torch.cuda.synchronize()
    c.lap("TorchBackend (build + weights)")
    return c.phases


def probe_engine(model: Path) -> dict[str, Any]:
    import asyncio

    c = Clock()
    from ember.engine.registry import Engines
    from ember.settings import Settings

    c.lap("import engine + settings")
    engines = Engines(Settings(model=str(model), device="cuda"))
    engines.preload().result()
    c.lap("load (preload thread)")
    asyncio.run(engines.start())
    c.lap("start (warm-up)")
    out: dict[str, Any] = dict(c.phases)
    m = engines.models[0]
    report = m.warmup_report
    if report is not None:
        shapes = report.to_dict()["shapes"]
        out["shapes"] = len(shapes)
        out["first_shape_s"] = shapes[0]["seconds"][0] if shapes else None
    backend = m.backend
    if backend is not None:
        rows = backend.shape_report()
        for key in ("first_ms", "capture_ms", "graph_ms"):
            out[f"sum_{key}"] = round(sum(r.get(key) or 0 for r in rows), 1)
        out["describe"] = backend.describe()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--probe", default="")
    parser.add_argument("--probes", default="cupy,engine")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.probe:
        run = {"cupy": probe_cupy, "torch": probe_torch, "engine": probe_engine}[args.probe]
        result = run(args.model)
        result["process_s"] = round(time.perf_counter() - T0, 4)
        print(json.dumps(result))
        return
    for probe in args.probes.split(","):
        for _ in range(args.repeat):
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--model", str(args.model), "--probe", probe]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = (done.stdout.strip().splitlines() or ["{}"])[-1]
            try:
                row = json.loads(line)
            except ValueError:
                row = {"error": done.stderr[-2000:]}
            row.update(probe=probe, model=args.model.name, wall_s=round(time.perf_counter() - t, 3))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
