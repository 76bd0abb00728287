"""The CUDA backends (CuPy and torch) without HTTP: warm-up cost per shape, eager vs CUDA
graph, steady latency per shape class, fp16/bf16 parity with the fp32 reference, import costs
and the out-of-memory fallback of warm-up.

    python benchmarks/gpu/backend_bench.py --model DIR --out results.json [--sections ...]

Sections (all by default): imports, shapes, steady, parity, oom. Each is independent and
failure-isolated (its error is recorded, the rest still run). Needs CUDA.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import Batch
from ember.engine.buckets import Buckets
from ember.models import ModelSpec, inspect_model

IMPORTS = {
    "torch": "import torch",
    "torch+cuda_init": "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
    "torch+cuda+cudnn": "import torch; torch.zeros(1, device='cuda'); "
    "torch.backends.cudnn.version()",
    "ember_torch_backend": "import ember.backends.torch_backend, ember.backends.bert, "
    "safetensors.torch",
    "transformers_bert": "import torch; from transformers import AutoModel; "
    "import transformers.models.bert.modeling_bert",
    "sentence_transformers": "import sentence_transformers",
    "fastapi+uvicorn": "import fastapi, uvicorn",
    "cupy": "import cupy",
    "cupy+cuda_init": "import cupy; cupy.zeros(1); cupy.cuda.runtime.deviceSynchronize()",
    "ember_cupy_backend": "import ember.backends.cupy_backend, safetensors.numpy, cupy",
    "ember_serving_set": "import ember.http.app, ember.engine.registry, tokenizers, numpy",
}


def time_import(code: str, repeats: int = 3) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out.append(round(time.perf_counter() - t0, 3))
    return out


def gpu_buckets() -> Buckets:
    return Buckets.build(
        max_length=256,
        seq_buckets=[16, 32, 64, 128, 256, 512],
        row_buckets=[],
        max_tokens=32768,
        max_rows=256,
        pads_rows=True,
    )


def synthetic_batch(rows: int, seq: int, rng: np.random.Generator) -> Batch:
    """Random word-piece ids with [CLS]/[SEP], lengths in [seq/2, seq] (as bucketing gives)."""
    ids = np.zeros((rows, seq), dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    for r in range(rows):
        n = int(rng.integers(max(seq // 2, 2), seq + 1))
        ids[r, 0], ids[r, n - 1] = 101, 102
        ids[r, 1 : n - 1] = rng.integers(1000, 30000, size=n - 2)
        mask[r, :n] = 1
    return Batch(
        input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids), real_rows=rows
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def warm_all(backend: Any, buckets: Buckets, rng: np.random.Generator) -> dict[str, Any]:
    sync, memory = _device_hooks(backend)
    shapes = buckets.shapes()
    sync()
    t0 = time.perf_counter()
    per = []
    for rows, seq in shapes:
        t1 = time.perf_counter()
        backend.run(synthetic_batch(rows, seq, rng))
        per.append({"rows": rows, "seq": seq, "ms": round((time.perf_counter() - t1) * 1000, 2)})
    total = time.perf_counter() - t0
    return {
        "shapes": len(shapes),
        "total_s": round(total, 3),
        "per_shape": per,
        "runner": backend.shape_report(),
        "describe": backend.describe(),
        **memory(),
    }


def _device_hooks(backend: Any) -> tuple[Any, Any]:
    """(synchronize, memory figures) for the backend's library."""
    if backend.name == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        return cupy.cuda.runtime.deviceSynchronize, lambda: {
            "memory_reserved_mib": round(pool.total_bytes() / 2**20, 1)
        }
    import torch

    return torch.cuda.synchronize, lambda: {
        "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "memory_reserved_mib": round(torch.cuda.memory_reserved() / 2**20, 1),
    }


STEADY = [(1, 16), (1, 64), (1, 256), (8, 256), (32, 64), (64, 64), (256, 64), (128, 256)]


def steady(backend: Any, rng: np.random.Generator, n: int = 50) -> dict[str, Any]:
    out = {}
    for rows, seq in STEADY:
        batches = [synthetic_batch(rows, seq, rng) for _ in range(4)]
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            backend.run(batches[i % 4])
            times.append((time.perf_counter() - t0) * 1000)
        med = statistics.median(times)
        out[f"{rows}x{seq}"] = {
            "median_ms": round(med, 3),
            "p90_ms": round(sorted(times)[int(0.9 * n)], 3),
            "rows_per_s": round(rows / med * 1000),
        }
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "cupy-graphs": {"graphs": True},
    "cupy-eager": {"graphs": False},
    "native-graphs": {"native": True, "cuda_graphs": True},
    "native-graphs-cudnn": {"native": True, "cuda_graphs": True, "sdpa_cudnn": True},
    "native-eager": {"native": True, "cuda_graphs": False},
    "transformers-graphs": {"native": False, "cuda_graphs": True},
}


def make_backend(spec: ModelSpec, name: str) -> Any:
    if name.startswith("cupy"):
        from ember.backends.cupy_backend import CupyBackend

        return CupyBackend(spec=spec, **VARIANTS[name])
    from ember.backends.torch_backend import TorchBackend

    return TorchBackend(spec=spec, device="cuda", dtype="float16", **VARIANTS[name])


def run_variant(model: str, name: str) -> dict[str, Any]:
    """One variant in this (fresh) process: import, load, warm every shape, steady timings."""
    t0 = time.perf_counter()
    if name.startswith("cupy"):
        import cupy  # noqa: F401

        import ember.backends.cupy_backend
    else:
        import torch  # noqa: F401

        import ember.backends.torch_backend  # noqa: F401
    imported = time.perf_counter() - t0
    spec = inspect_model(model)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    backend = make_backend(spec, name)
    sync, _ = _device_hooks(backend)
    sync()
    load = time.perf_counter() - t0
    entry = {"import_s": round(imported, 3), "load_s": round(load, 3)}
    entry["warm"] = warm_all(backend, gpu_buckets(), rng)
    entry["steady"] = steady(backend, rng)
    return entry


def section_shapes(spec: ModelSpec, results: dict[str, Any]) -> None:
    names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--model", str(spec.path), "--variant", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            results["errors"][f"shapes:{name}"] = proc.stderr[-3000:]
            print(f"{name} failed: {proc.stderr[-1500:]}", flush=True)
            continue
        entry = json.loads(proc.stdout.strip().splitlines()[-1])
        results["shapes"][name] = entry
        w = entry["warm"]
        print(
            f"{name}: import {entry['import_s']}s load {entry['load_s']}s warm {w['total_s']}s "
            f"(first shape {w['per_shape'][0]['ms']} ms) "
            f"graphs {w['describe'].get('graph_shapes')} "
            "steady " + ", ".join(f"{k} {v['median_ms']}ms" for k, v in entry["steady"].items()),
            flush=True,
        )


def section_parity(spec: ModelSpec, results: dict[str, Any]) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.corpus import PARITY_TEXTS
    from tests.unit.backends.common import batch_of

    from ember.backends.torch_backend import TorchBackend

    st = SentenceTransformer(str(spec.path), device="cpu")
    st.to(torch.float32)
    ref = st.encode(PARITY_TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    st_gpu = SentenceTransformer(str(spec.path), device="cuda")
    st_gpu.to(torch.float32)
    ref_gpu = st_gpu.encode(PARITY_TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    results["parity"]["st_fp32_gpu_vs_cpu_min_cos"] = float(cosines(ref_gpu, ref).min())
    del st_gpu
    from ember.backends.cupy_backend import CupyBackend

    variants: list[tuple[str, Any]] = [
        (f"float16-cupy-{'graphs' if g else 'eager'}", lambda g=g: CupyBackend(spec=spec, graphs=g))
        for g in (True, False)
    ]
    variants += [
        (
            f"{dtype}-{'native' if native else 'transformers'}",
            lambda d=dtype, nat=native: TorchBackend(spec=spec, device="cuda", dtype=d, native=nat),
        )
        for dtype in ("float16", "bfloat16", "float32")
        for native in (True, False)
    ]
    n = len(PARITY_TEXTS)
    for key, make in variants:
        backend = make()
        found = {}
        # The same texts through several bucket shapes, each run twice (first run captures).
        for rows, seq in ((32, 256), (n, 256), (64, 256)):
            batch = batch_of(spec, list(PARITY_TEXTS), rows=rows, seq=seq)
            first = backend.run(batch)[:n]
            again = backend.run(batch)[:n]
            found[f"{rows}x{seq}"] = {
                "min_cos": float(cosines(again, ref).min()),
                "mean_cos": float(cosines(again, ref).mean()),
                "replay_equals_first": bool(np.array_equal(first, again)),
            }
        results["parity"][key] = found
        print(key, {k: round(v["min_cos"], 6) for k, v in found.items()}, flush=True)
        backend.close()
    # Every shape's graph after all were captured into one pool: does a replay still equal an
    # eager forward of the same batch? (The shared pool is only safe if it does.)
    rng = np.random.default_rng(1)
    backend = TorchBackend(spec=spec, device="cuda", dtype="float16")
    eager = TorchBackend(spec=spec, device="cuda", dtype="float16", cuda_graphs=False)
    buckets = gpu_buckets()
    for rows, seq in buckets.shapes():
        backend.run(synthetic_batch(rows, seq, rng))
    worst = 1.0
    for rows, seq in reversed(buckets.shapes()):
        batch = synthetic_batch(rows, seq, rng)
        worst = min(worst, float(cosines(backend.run(batch), eager.run(batch)).min()))
    results["parity"]["graph_vs_eager_all_shapes_min_cos"] = worst
    print("graph vs eager, all shapes, min cos", worst, flush=True)
    backend.close()
    eager.close()


def section_oom(spec: ModelSpec, results: dict[str, Any]) -> None:
    """Warm-up through the real engine with the allocator capped below what 32768 tokens need."""
    import torch

    from ember.backends.torch_backend import TorchBackend
    from ember.engine.registry import Engines
    from ember.settings import Settings

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap_mib = 200
    settings = Settings(model=[str(spec.path)], warmup=True)

    def factory(s: ModelSpec, st: Settings) -> TorchBackend:
        backend = TorchBackend(spec=s, device="cuda", dtype="float16")
        allowed = torch.cuda.memory_allocated() + cap_mib * 2**20
        torch.cuda.set_per_process_memory_fraction(allowed / total)
        return backend

    async def go() -> dict[str, Any]:
        engines = Engines(settings, backend_factory=factory)
        t0 = time.perf_counter()
        await engines.start()
        took = time.perf_counter() - t0
        model = engines.models[0] if engines.models else None
        out = {
            "stage": engines.stage.value,
            "error": engines.lifecycle.error,
            "seconds": round(took, 2),
            "cap_mib_above_weights": cap_mib,
        }
        if model is not None:
            d = model.describe()
            out["max_batch_tokens"] = d["buckets"]["max_batch_tokens"]
            out["shapes"] = d["buckets"]["shapes"]
            out["describe"] = {k: v for k, v in d.items() if k not in ("warmup",)}
        await engines.stop()
        return out

    results["oom"] = asyncio.run(go())
    torch.cuda.set_per_process_memory_fraction(1.0)
    print("oom fallback:", {k: v for k, v in results["oom"].items() if k != "describe"}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sections", default="imports,shapes,parity,oom")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.model, args.variant)))
        return
    spec = inspect_model(args.model)
    results: dict[str, Any] = {"model": args.model, "shapes": {}, "parity": {}, "errors": {}}
    for section in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            if section == "imports":
                results["imports"] = {k: time_import(v, 2) for k, v in IMPORTS.items()}
                print("imports", results["imports"], flush=True)
            elif section == "shapes":
                section_shapes(spec, results)
            elif section == "parity":
                section_parity(spec, results)
            elif section == "oom":
                section_oom(spec, results)
        except Exception:
            results["errors"][section] = traceback.format_exc()
            print(f"section {section} failed:\n{traceback.format_exc()}", flush=True)
        print(f"-- section {section}: {time.perf_counter() - t0:.1f}s", flush=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
