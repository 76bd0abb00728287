"""The CuPy backend: plain BERT models on CUDA in fp16 without importing torch.

Why: on the lent H100 VM `import torch` alone takes 2.1-2.6 s of a 3.95 s start, more than
loading, warming and serving the model together; CuPy imports in 0.3-0.4 s and its kernels,
compiled once by NVRTC, load from CuPy's disk cache in about a millisecond (docs/gpu.md). The
forward is the one in `bert.py` (same weights, same pooling), written as cuBLAS GEMMs (fp16 in,
fp32 accumulate, `cublas.py`) and a few fused kernels (`cuda_kernels.cu`: embeddings + norm,
bias + residual + norm, masked softmax in fp32, bias + activation, pooling).

Every intermediate lives in one workspace sized for the largest batch (warm-up runs it first),
so steady state never allocates and every bucket shape is captured as a CUDA graph over fixed
addresses: a batch is one pinned copy in, one graph launch, one copy out, one sync. Sharing the
workspace is safe because `run` is called from one thread at a time and each output is copied
to the host before the next batch starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import (
    GPU_SEQ,
    Batch,
    Capabilities,
    DeviceOutOfMemory,
    FloatArray,
    is_oom,
    use_short_gil_switch,
)
from ember.backends.bert import named_weights, supported
from ember.backends.cublas import R_32F, WORKSPACE_BYTES, Cublas
from ember.errors import ModelError
from ember.models import ModelSpec, Task
from ember.settings import Settings

log = logging.getLogger("ember.backends.cupy")

_ACT = {"gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "relu": 3}
_TANH = 4
_POOL = {"mean": 0, "cls": 1, "max": 2, "lasttoken": 3}
_THREADS = 128
"""Threads per block of the row kernels: a warp per row, 4 rows a block."""
_ROWS_PER_BLOCK = _THREADS // 32
_MAX_HIDDEN = 32 * 32
"""The norm kernels hold a row in one warp's registers, 32 values a lane."""
_ELEMENTWISE = 256
_HALF, _FLOAT, _INT = 2, 4, 4
_KERNELS = (
    "embed_layernorm",
    "add_layernorm",
    "split_heads",
    "masked_softmax",
    "merge_heads",
    "bias_act",
    "add_bias_f32",
    "pool",
    "take_cls",
)


def unsupported(spec: ModelSpec, settings: Settings) -> str | None:
    """Why this backend cannot serve `spec` (torch then does), or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    if settings.dtype not in ("auto", "float16"):
        return f"dtype {settings.dtype} (this backend runs float16)"
    config = supported(spec)
    if config is None:
        return "not a plain BERT model in model.safetensors"
    if int(config["hidden_size"]) > _MAX_HIDDEN:
        return f"hidden size over {_MAX_HIDDEN}"
    if spec.task is Task.EMBED and spec.pooling not in _POOL:
        return f"pooling {spec.pooling}"
    dtypes = _safetensors_dtypes(spec.path / "model.safetensors")
    if not dtypes <= {"F32", "F16", "I64"}:
        return f"weights stored as {sorted(dtypes)}"
    return None


def _safetensors_dtypes(path: Path) -> set[str]:
    """The tensor dtypes a safetensors file holds, from its header alone."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header: dict[str, Any] = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {"unreadable"}
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def use_kernel_cache(cache_dir: Path) -> Path:
    """Keep CuPy's compiled kernels under ember's cache folder (writable wherever artifacts
    are, unlike a container's home) unless CuPy's own CUPY_CACHE_DIR says otherwise; returns
    the folder in use."""
    return Path(os.environ.setdefault("CUPY_CACHE_DIR", str(cache_dir / "cuda-kernels")))


def load_kernels() -> dict[str, Any]:
    """ember's kernels for this GPU: compiled by NVRTC the first time (~0.1-0.5 s), then loaded
    from CuPy's disk cache (~1 ms)."""
    import cupy as cp

    source = Path(__file__).with_name("cuda_kernels.cu").read_text("utf-8")
    module = cp.RawModule(code=source, options=("--std=c++14",))
    return {name: module.get_function(name) for name in _KERNELS}


def prepare_kernels(cache_dir: Path) -> Path:
    """`ember prepare --device cuda`: compile the kernels into the cache ahead of serving."""
    folder = use_kernel_cache(cache_dir)
    try:
        for kernel in load_kernels().values():
            _ = kernel.attributes  # forces the compile and the module load
    except Exception as exc:
        raise ModelError(f"cannot compile the CUDA kernels: {exc}") from exc
    return folder


@dataclass(slots=True)
class ShapeState:
    graph: Any = None
    """cupy.cuda.graph.Graph, or None where capture failed (the shape then runs eagerly)."""
    first_ms: float = 0.0
    capture_ms: float | None = None
    graph_ms: float | None = None


class Workspace:
    """Device buffers for any batch of up to `tokens` tokens and `seq` positions."""

    def __init__(self, cp: Any, *, tokens: int, seq: int, dims: Dims) -> None:
        self.tokens, self.seq = tokens, seq
        h, heads = dims.hidden, dims.heads
        self.inputs = cp.empty(3 * tokens, dtype=cp.int32)
        self.x = cp.empty(tokens * h, dtype=cp.float16)
        self.x2 = cp.empty(tokens * h, dtype=cp.float16)
        self.tmp = cp.empty(tokens * max(3 * h, dims.intermediate), dtype=cp.float16)
        self.heads = cp.empty(3 * tokens * h, dtype=cp.float16)
        # Score rows for every (row, head, query) of any batch that fits: rows·seq ≤ tokens.
        self.scores = cp.empty(tokens * seq * heads, dtype=cp.float32)
        self.probs = cp.empty(tokens * seq * heads, dtype=cp.float16)
        # One output row per batch row; rows ≤ tokens whatever the length.
        self.out = cp.empty(tokens * dims.width, dtype=cp.float32)

    def fits(self, rows: int, seq: int) -> bool:
        return rows * seq <= self.tokens and seq <= self.seq


@dataclass(frozen=True, slots=True)
class Dims:
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    layers: int
    width: int
    """Output columns: hidden (embed) or labels (rerank, classify)."""


class CupyBackend:
    """A BERT model on CUDA through CuPy; `run` takes numpy, returns float32 numpy."""

    name = "cupy"

    def __init__(
        self, *, spec: ModelSpec, graphs: bool = True, cache_dir: Path | None = None
    ) -> None:
        started = time.perf_counter()
        config = supported(spec)
        if config is None:
            raise ModelError(f"{spec.path} is not a plain BERT model the CuPy backend can run")
        if cache_dir is not None:
            use_kernel_cache(cache_dir)
        import cupy as cp

        self._cp = cp
        self.spec = spec
        self.graphs_enabled = graphs
        try:
            cp.cuda.Device().use()
            self.gpu = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
        except Exception as exc:
            raise ModelError(f"CUDA is not available to CuPy: {exc}") from exc
        use_short_gil_switch()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._k = load_kernels()
        labels = max(len(spec.labels), 1)
        hidden = int(config["hidden_size"])
        self.dims = Dims(
            hidden=hidden,
            heads=int(config["num_attention_heads"]),
            head_dim=hidden // int(config["num_attention_heads"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            width=hidden if spec.task is Task.EMBED else labels,
        )
        self.eps = np.float32(config.get("layer_norm_eps", 1e-12))
        self.act = np.int32(_ACT[config.get("hidden_act", "gelu")])
        self.pool_method = np.int32(_POOL.get(spec.pooling, 0))
        self.scale = 1.0 / math.sqrt(self.dims.head_dim)
        self._weights = self._load_weights(spec)
        self._blas_workspace = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
        cp.cuda.device.get_cublas_handle()  # loads CuPy's libcublas, which Cublas binds to
        self._blas = Cublas(stream=self.stream.ptr, workspace=self._blas_workspace.data.ptr)
        self._ws: Workspace | None = None
        self._shapes: dict[tuple[int, int], ShapeState] = {}
        self._host_in = np.empty(0, dtype=np.int32)
        self._host_out = np.empty(0, dtype=np.float32)
        self.capture_failures = 0
        self.capabilities = Capabilities(
            device="cuda",
            lengths="coarse",
            seq_buckets=GPU_SEQ,
            pads_rows=True,
            warm="all",
            output_width=self.dims.width,
            max_batch_tokens=32768,
            max_batch_rows=256,
            oom=DeviceOutOfMemory,
        )
        self.stream.synchronize()
        self.load_seconds = time.perf_counter() - started

    def _load_weights(self, spec: ModelSpec) -> dict[str, int]:
        """The model's tensors on the device as fp16 (Q, K and V fused), by short name → pointer."""
        cp = self._cp
        from safetensors.numpy import load_file

        try:
            host = load_file(str(spec.path / "model.safetensors"))
            named = named_weights(host, layers=self.dims.layers, task=spec.task)
        except Exception as exc:
            raise ModelError(f"cannot load weights from {spec.path}: {exc}") from exc
        for i in range(self.dims.layers):
            for kind in ("w", "b"):
                parts = [named.pop(f"{i}.{p}_{kind}") for p in "qkv"]
                named[f"{i}.qkv_{kind}"] = np.concatenate(parts)
        self._arrays: dict[str, Any] = {}
        with self.stream:
            for key, value in named.items():
                self._arrays[key] = cp.asarray(np.ascontiguousarray(value, dtype=np.float16))
        return {key: int(array.data.ptr) for key, array in self._arrays.items()}

    # --- serving ------------------------------------------------------------------------

    def run(self, batch: Batch) -> FloatArray:
        rows, seq = batch.shape
        try:
            return self._run(batch)
        except Exception as exc:
            if not self._is_oom(exc):
                raise
            log.info("out of memory at %dx%d: %s", rows, seq, exc)
        self._release()
        raise DeviceOutOfMemory(f"the GPU ran out of memory for a batch of {rows}x{seq} tokens")

    def _is_oom(self, exc: BaseException) -> bool:
        return is_oom(exc, self._cp.cuda.memory.OutOfMemoryError)

    def _run(self, batch: Batch) -> FloatArray:
        rows, seq = batch.shape
        state = self._shapes.get((rows, seq))
        if state is None:
            return self._first_run(batch)
        self._upload(batch)
        if state.graph is not None:
            state.graph.launch(self.stream)
        else:
            with self.stream:
                self._forward(rows, seq)
        return self._download(rows)

    def _first_run(self, batch: Batch) -> FloatArray:
        """The first batch of a shape: a cold eager forward, then a capture (warm-up does this
        for every bucket shape, largest first, before the server is ready)."""
        rows, seq = batch.shape
        self._ensure_workspace(rows, seq)
        self._upload(batch)
        state = ShapeState()
        t0 = time.perf_counter()
        with self.stream:
            self._forward(rows, seq)
        self.stream.synchronize()
        state.first_ms = (time.perf_counter() - t0) * 1000
        if self.graphs_enabled:
            self._capture(state, rows, seq)
        self._shapes[(rows, seq)] = state
        if state.graph is not None:
            t0 = time.perf_counter()
            state.graph.launch(self.stream)
            self.stream.synchronize()
            state.graph_ms = (time.perf_counter() - t0) * 1000
        return self._download(rows)

    def _capture(self, state: ShapeState, rows: int, seq: int) -> None:
        t0 = time.perf_counter()
        self.stream.begin_capture()
        try:
            with self.stream:
                self._forward(rows, seq)
        except Exception as exc:
            try:
                self.stream.end_capture()
            except Exception:
                log.debug("ending a failed capture", exc_info=True)
            if self._is_oom(exc):
                raise
            self.capture_failures += 1
            if self.capture_failures == 1:
                log.warning("CUDA graph capture failed (%s); this shape runs eagerly", exc)
            return
        graph = self.stream.end_capture()
        graph.upload(self.stream)
        state.graph = graph
        state.capture_ms = (time.perf_counter() - t0) * 1000

    def _ensure_workspace(self, rows: int, seq: int) -> None:
        """Size the workspace for this batch. Warm-up runs the largest shape first, so this
        allocates once; a larger batch later (only without warm-up) drops the graphs, which
        point into the old buffers, and they are captured again at their next first run."""
        if self._ws is not None and self._ws.fits(rows, seq):
            return
        old = self._ws
        tokens = max(rows * seq, old.tokens if old else 0)
        longest = max(seq, self.spec.max_length, old.seq if old else 0)
        self._shapes.clear()
        self._ws = None
        del old
        self._ws = Workspace(self._cp, tokens=tokens, seq=longest, dims=self.dims)
        self._host_in = _pinned(self._cp, 3 * tokens, np.int32)

    def _upload(self, batch: Batch) -> None:
        ws = self._ws
        assert ws is not None
        rows, seq = batch.shape
        n = rows * seq
        staged = self._host_in[: 3 * n].reshape(3, rows, seq)
        staged[0] = batch.input_ids
        staged[1] = batch.attention_mask
        staged[2] = batch.token_type_ids
        self._cp.cuda.runtime.memcpyAsync(
            ws.inputs.data.ptr, staged.ctypes.data, 3 * n * _INT, 1, self.stream.ptr
        )

    def _download(self, rows: int) -> FloatArray:
        ws = self._ws
        assert ws is not None
        n = rows * self.dims.width
        if self._host_out.size < n:  # host side only: no graph points here
            self._host_out = _pinned(self._cp, n)
        host = self._host_out[:n]
        self._cp.cuda.runtime.memcpyAsync(
            host.ctypes.data, ws.out.data.ptr, n * _FLOAT, 2, self.stream.ptr
        )
        self.stream.synchronize()  # the GIL is released while waiting
        # A copy: the pinned buffer is overwritten by the next batch.
        return host.reshape(rows, self.dims.width).copy()

    def _forward(self, rows: int, seq: int) -> None:
        """Issue the encoder for the batch in `inputs` on the current stream (no host sync)."""
        ws, w, k, blas, d = self._ws, self._weights, self._k, self._blas, self.dims
        assert ws is not None
        tokens = rows * seq
        h, heads, hd = d.hidden, d.heads, d.head_dim
        ids = ws.inputs.data.ptr
        mask, types = ids + tokens * _INT, ids + 2 * tokens * _INT
        x, x2, tmp = ws.x.data.ptr, ws.x2.data.ptr, ws.tmp.data.ptr
        q = ws.heads.data.ptr
        kk, v = q + tokens * h * _HALF, q + 2 * tokens * h * _HALF
        scores, probs = ws.scores.data.ptr, ws.probs.data.ptr
        i32, i64, ptr = np.int32, np.int64, np.uint64
        row_block = (_THREADS,)

        def grid(n: int) -> tuple[int]:
            return ((n + _ELEMENTWISE - 1) // _ELEMENTWISE,)

        def warps(n: int) -> tuple[int]:
            return ((n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK,)

        k["embed_layernorm"](
            warps(tokens),
            row_block,
            (ptr(x), ptr(ids), ptr(types), ptr(w["word"]), ptr(w["position"]),
             ptr(w.get("types", 0)), ptr(w["emb_ln_w"]), ptr(w["emb_ln_b"]), i32(seq), i32(h),
             self.eps, i64(tokens)),
        )  # fmt: skip
        for i in range(d.layers):

            def p(name: str, i: int = i) -> np.uint64:
                return ptr(w[f"{i}.{name}"])

            blas.linear(tmp, x, w[f"{i}.qkv_w"], tokens=tokens, n=3 * h, k=h)
            k["split_heads"](
                grid(tokens * 3 * h),
                (_ELEMENTWISE,),
                (ptr(q), ptr(tmp), p("qkv_b"), i32(seq), i32(heads), i32(hd), i64(tokens)),
            )
            blas.scores(scores, q, kk, batch=rows * heads, seq=seq, dim=hd, scale=self.scale)
            k["masked_softmax"](
                warps(rows * heads * seq),
                row_block,
                (ptr(probs), ptr(scores), ptr(mask), i32(seq), i32(heads), i64(rows * heads * seq)),
            )
            blas.context(x2, probs, v, batch=rows * heads, seq=seq, dim=hd)
            k["merge_heads"](
                grid(tokens * h),
                (_ELEMENTWISE,),
                (ptr(tmp), ptr(x2), i32(seq), i32(heads), i32(hd), i64(tokens * h)),
            )
            blas.linear(x2, tmp, w[f"{i}.out_w"], tokens=tokens, n=h, k=h)
            k["add_layernorm"](
                warps(tokens),
                row_block,
                (
                    ptr(x),
                    ptr(x2),
                    p("out_b"),
                    p("ln1_w"),
                    p("ln1_b"),
                    i32(h),
                    self.eps,
                    i64(tokens),
                ),
            )
            blas.linear(tmp, x, w[f"{i}.up_w"], tokens=tokens, n=d.intermediate, k=h)
            k["bias_act"](
                grid(tokens * d.intermediate),
                (_ELEMENTWISE,),
                (ptr(tmp), p("up_b"), i32(d.intermediate), i64(tokens * d.intermediate), self.act),
            )
            blas.linear(x2, tmp, w[f"{i}.down_w"], tokens=tokens, n=h, k=d.intermediate)
            k["add_layernorm"](
                warps(tokens),
                row_block,
                (
                    ptr(x),
                    ptr(x2),
                    p("down_b"),
                    p("ln2_w"),
                    p("ln2_b"),
                    i32(h),
                    self.eps,
                    i64(tokens),
                ),
            )
        out = ws.out.data.ptr
        if self.spec.task is Task.EMBED:
            k["pool"](
                (rows,),
                row_block,
                (ptr(out), ptr(x), ptr(mask), i32(seq), i32(h), self.pool_method),
            )
            return
        # Sequence classification: [CLS] → pooler dense → tanh → classifier.
        k["take_cls"](
            (grid(rows * h)), (_ELEMENTWISE,), (ptr(tmp), ptr(x), i32(seq), i32(h), i64(rows * h))
        )
        blas.linear(x2, tmp, w["pooler_w"], tokens=rows, n=h, k=h)
        k["bias_act"](
            grid(rows * h),
            (_ELEMENTWISE,),
            (ptr(x2), ptr(w["pooler_b"]), i32(h), i64(rows * h), np.int32(_TANH)),
        )
        blas.linear(out, x2, w["classifier_w"], tokens=rows, n=d.width, k=h, out_type=R_32F)
        k["add_bias_f32"](
            grid(rows * d.width),
            (_ELEMENTWISE,),
            (ptr(out), ptr(w["classifier_b"]), i32(d.width), i64(rows * d.width)),
        )

    def _release(self) -> None:
        """Drop every graph and buffer and give cached blocks back to the driver, so that a
        retry at a smaller token budget starts from nothing."""
        cp = self._cp
        self._shapes.clear()
        self._ws = None
        self._host_in = np.empty(0, dtype=np.int32)
        self._host_out = np.empty(0, dtype=np.float32)
        cp.cuda.runtime.deviceSynchronize()
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()

    # --- reporting ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        graphs = sum(1 for s in self._shapes.values() if s.graph is not None)
        return {
            "backend": self.name,
            "device": "cuda",
            "dtype": "float16",
            "threads": None,
            "implementation": "native-bert",
            "cuda_graphs": self.graphs_enabled,
            "graph_shapes": graphs,
            "eager_shapes": len(self._shapes) - graphs,
            "graph_capture_failures": self.capture_failures,
            "gpu": self.gpu,
            "gpu_memory_reserved_mib": round(
                self._cp.get_default_memory_pool().total_bytes() / 2**20, 1
            ),
        }

    def shape_report(self) -> list[dict[str, Any]]:
        """Per shape: first (cold) eager, capture and first replay milliseconds."""
        return [
            {
                "rows": r,
                "seq": s,
                "first_ms": round(st.first_ms, 3),
                "capture_ms": None if st.capture_ms is None else round(st.capture_ms, 3),
                "graph_ms": None if st.graph_ms is None else round(st.graph_ms, 3),
                "graph": st.graph is not None,
            }
            for (r, s), st in sorted(self._shapes.items())
        ]

    def close(self) -> None:
        if not self._arrays:
            return  # closed already
        self._release()
        self._blas.close()
        self._arrays.clear()
        self._weights.clear()
        self._cp.get_default_memory_pool().free_all_blocks()


def _pinned(cp: Any, count: int, dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    """A numpy array of `count` items over page-locked host memory (fast, async copies)."""
    itemsize = np.dtype(dtype).itemsize
    memory = cp.cuda.alloc_pinned_memory(max(count, 1) * itemsize)
    return np.frombuffer(memory, dtype=dtype, count=max(count, 1))
