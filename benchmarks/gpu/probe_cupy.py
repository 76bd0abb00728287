"""Probe: what a torch-free CUDA path (CuPy) would cost at start-up, next to `import torch`.

Run on the device (bytecode kept with PYTHONPYCACHEPREFIX, twice, so the second run is warm):
    python3 benchmarks/gpu/probe_cupy.py
Prints one JSON line per phase: import, CUDA context, first cuBLAS fp16 matmul, NVRTC compile
of a small kernel (first-ever, then from CuPy's disk cache), stream capture and graph replay.
"""

from __future__ import annotations

import json
import time

t0 = time.perf_counter()
import cupy as cp  # noqa: E402

marks: dict[str, float] = {"import_cupy": time.perf_counter() - t0}


def mark(name: str, since: float) -> float:
    now = time.perf_counter()
    marks[name] = round(now - since, 4)
    return now


t = time.perf_counter()
cp.cuda.Device(0).use()
x = cp.zeros(1, dtype=cp.float32)
cp.cuda.runtime.deviceSynchronize()
t = mark("context_and_alloc", t)

a = cp.ones((64, 384), dtype=cp.float16)
w = cp.ones((384, 1536), dtype=cp.float16)
y = a @ w
cp.cuda.runtime.deviceSynchronize()
t = mark("first_fp16_matmul", t)
y = a @ w
cp.cuda.runtime.deviceSynchronize()
t = mark("second_fp16_matmul", t)

src = r"""
extern "C" __global__ void scale(const half* x, half* y, float s, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2half(__half2float(x[i]) * s);
}
"""
kernel = cp.RawKernel("#include <cuda_fp16.h>\n" + src, "scale")
out = cp.empty_like(y)
kernel((y.size // 256 + 1,), (256,), (y, out, cp.float32(0.5), cp.int32(y.size)))
cp.cuda.runtime.deviceSynchronize()
t = mark("rawkernel_compile_and_run", t)

ew = cp.ElementwiseKernel("T x", "T y", "y = x * x", "sq")
z = ew(y)
cp.cuda.runtime.deviceSynchronize()
t = mark("elementwise_compile_and_run", t)

stream = cp.cuda.Stream(non_blocking=True)
static_in = cp.ones((64, 384), dtype=cp.float16)
graph_ok: str
try:
    with stream:
        static_out = (static_in @ w).astype(cp.float32)
        stream.synchronize()
        stream.begin_capture()
        static_out = ew(static_in @ w)
        graph = stream.end_capture()
    graph.upload(stream)
    t = mark("capture", t)
    for _ in range(3):
        graph.launch(stream)
    stream.synchronize()
    t1 = time.perf_counter()
    for _ in range(100):
        graph.launch(stream)
    stream.synchronize()
    marks["graph_replay_ms"] = round((time.perf_counter() - t1) * 10, 4)
    graph_ok = "yes"
except Exception as exc:
    graph_ok = f"{type(exc).__name__}: {exc}"
marks["total"] = round(time.perf_counter() - t0, 4)
print(json.dumps({"cupy": cp.__version__, "graph": graph_ok, **marks}))
