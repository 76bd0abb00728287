"""The CuPy backend: BERT-shaped models (BERT, RoBERTa, XLM-R, DistilBERT; embeddings and
classification heads) on CUDA in fp16 without importing torch.

Why: on the lent H100 VM `import torch` alone takes 2.1-2.6 s of a 3.95 s start, more than
loading, warming and serving the model together; CuPy imports in 0.3-0.4 s and its kernels,
compiled once by NVRTC, load from CuPy's disk cache in about a millisecond (docs/gpu.md). The
forward (`cupy_encoder.py`) is the one in `bert.py`, same weights, same pooling.

This module is the serving side: one workspace sized for the largest batch (warm-up runs it
first), every bucket shape captured as a CUDA graph over its fixed addresses, so that a batch is
one pinned copy in, one graph launch, one copy out, one sync. Sharing the workspace is safe
because `run` is called from one thread at a time and each output is copied to the host before
the next batch starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import (
    CUPY_FINE_ROWS,
    CUPY_SEQ,
    GPU_SEQ,
    Batch,
    Capabilities,
    DeviceOutOfMemory,
    FloatArray,
    use_short_gil_switch,
)
from ember.backends.base import is_oom as _is_oom
from ember.backends.bert import FAMILIES, supported
from ember.backends.cublas import WORKSPACE_BYTES, Cublas
from ember.backends.cuda_kernels import (
    MAX_HIDDEN,
    POOLING,
    Kernels,
    prepare_kernels,
    use_kernel_cache,
)
from ember.backends.cupy_encoder import CupyEncoder, Workspace
from ember.backends.gpu_shapes import ShapeState, run_or_raise_oom, shape_report
from ember.errors import ModelError
from ember.models import ModelSpec, Task
from ember.settings import Settings

__all__ = ["CupyBackend", "prepare_kernels", "unsupported"]
"""`prepare_kernels` is re-exported: `ember prepare --device cuda` calls it from here."""

log = logging.getLogger("ember.backends.cupy")

_INT, _FLOAT, _HALF = 4, 4, 2
_TO_DEVICE, _TO_HOST = 1, 2
"""cudaMemcpyKind values."""


def unsupported(spec: ModelSpec, settings: Settings) -> str | None:
    """Why this backend cannot serve `spec` (torch then does), or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    if settings.dtype not in ("auto", "float16"):
        return f"dtype {settings.dtype} (this backend runs float16)"
    config = supported(spec)
    if config is None:
        return f"not a BERT-shaped encoder ({', '.join(FAMILIES)}) in model.safetensors"
    if config.hidden > MAX_HIDDEN:
        return f"hidden size over {MAX_HIDDEN}"
    if spec.task is Task.EMBED and spec.pooling not in POOLING:
        return f"pooling {spec.pooling}"
    if spec.dense:
        return "Dense modules after pooling"
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


_NUMPY = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
_KEEP_FP32 = ("position_embeddings", "token_type_embeddings")
"""Summed at load (`bert.named_weights`) before the cast to float16, as they always were."""


def host_weights(path: Path, *, threads: int = 4) -> dict[str, np.ndarray[Any, Any]]:
    """The safetensors file's tensors, float32 ones already cast to the float16 the device
    holds (`_KEEP_FP32` excepted): read from a memory map of the file and cast on `threads`
    threads (numpy's casts release the GIL). safetensors' `load_file` copies every tensor on
    one thread first and the encoder cast them after: for a 110M model (438 MB) 0.30 s to read
    and 0.47-0.66 s to cast and copy, on the H200 host."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(size))
    mapped = np.memmap(path, dtype=np.uint8, mode="r")

    def load(name: str) -> tuple[str, np.ndarray[Any, Any]]:
        meta = header[name]
        start, end = (8 + size + offset for offset in meta["data_offsets"])
        view = mapped[start:end].view(_NUMPY[meta["dtype"]]).reshape(meta["shape"])
        cast = view.dtype == np.float32 and not any(k in name for k in _KEEP_FP32)
        return name, view.astype(np.float16) if cast else np.array(view)

    names = [k for k in header if k != "__metadata__"]
    with ThreadPoolExecutor(threads, thread_name_prefix="ember-weights") as pool:
        return dict(pool.map(load, names))


CupyShape = ShapeState[Any, None]
"""A shape's cupy.cuda.graph.Graph (None: capture failed, it runs eagerly) and timings."""


class CupyBackend:
    """A BERT-shaped model on CUDA through CuPy; `run` takes numpy, returns float32 numpy."""

    name = "cupy"

    def __init__(
        self, *, spec: ModelSpec, graphs: bool = True, cache_dir: Path | None = None
    ) -> None:
        started = time.perf_counter()
        config = supported(spec)
        if config is None:
            raise ModelError(f"{spec.path} is not a BERT-shaped model the CuPy backend can run")
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
        self.config = config
        self.width = config.hidden if spec.task is Task.EMBED else max(len(spec.labels), 1)
        self._blas_workspace = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
        cp.cuda.device.get_cublas_handle()  # loads CuPy's libcublas, which Cublas binds to
        self._blas = Cublas(stream=self.stream.ptr, workspace=self._blas_workspace.data.ptr)
        kernels = Kernels.compile()
        try:
            host = host_weights(spec.path / "model.safetensors")
            with self.stream:
                self.encoder = CupyEncoder(
                    cp=cp, config=config, host_weights=host, task=spec.task,
                    pooling=spec.pooling, width=self.width, kernels=kernels, blas=self._blas,
                )  # fmt: skip
        except Exception as exc:
            raise ModelError(f"cannot load weights from {spec.path}: {exc}") from exc
        self._ws: Workspace | None = None
        self._shapes: dict[tuple[int, int], CupyShape] = {}
        self._host_in = np.empty(0, dtype=np.int32)
        self._host_out = np.empty(0, dtype=np.float32)
        self._host_hidden = np.empty(0, dtype=np.float16)
        self.capture_failures = 0
        self.capabilities = Capabilities(
            device="cuda",
            lengths="coarse",
            seq_buckets=CUPY_SEQ,
            small_batch_seq=GPU_SEQ,
            fine_rows=CUPY_FINE_ROWS,
            pads_rows=True,
            warm="all",
            output_width=self.width,
            # Half torch's: with the finer lengths, 32768 tokens would warm the BERT-base-sized
            # model in ~1.6 s of backend time (the largest shapes' compute), 16384 in ~0.9 s
            # (per-shape timings: RESULTS-gpu.md, session 18).
            max_batch_tokens=16384,
            max_batch_rows=256,
            oom=DeviceOutOfMemory,
            token_outputs=spec.task is Task.EMBED,
        )
        self.stream.synchronize()
        self.load_seconds = time.perf_counter() - started

    # --- serving ------------------------------------------------------------------------

    def run(self, batch: Batch) -> FloatArray:
        oom = (self._cp.cuda.memory.OutOfMemoryError,)
        return run_or_raise_oom(self._run, batch, oom_types=oom, release=self._release)

    def run_tokens(self, batch: Batch) -> FloatArray:
        oom = (self._cp.cuda.memory.OutOfMemoryError,)
        return run_or_raise_oom(self._run_tokens, batch, oom_types=oom, release=self._release)

    def _run_tokens(self, batch: Batch) -> FloatArray:
        """The shape's usual forward (its graph; pooling is a small kernel), then the last
        hidden state it leaves in the workspace: fp16 (rows·seq, hidden) → float32."""
        rows, seq = batch.shape
        self._run(batch)
        assert self._ws is not None
        n = rows * seq * self.config.hidden
        if self._host_hidden.size < n:  # host side only: no graph points here
            self._host_hidden = _pinned(self._cp, n, np.float16)
        host = self._host_hidden[:n]
        self._cp.cuda.runtime.memcpyAsync(
            host.ctypes.data, self._ws.x.data.ptr, n * _HALF, _TO_HOST, self.stream.ptr
        )
        self.stream.synchronize()
        return host.reshape(rows, seq, self.config.hidden).astype(np.float32)

    def _is_oom(self, exc: BaseException) -> bool:
        return _is_oom(exc, self._cp.cuda.memory.OutOfMemoryError)

    def _run(self, batch: Batch) -> FloatArray:
        rows, seq = batch.shape
        state = self._shapes.get((rows, seq))
        if state is None:
            return self._first_run(batch)
        self._upload(batch)
        if state.graph is not None:
            state.graph.launch(self.stream)
        else:
            self._forward(rows, seq)
        return self._download(rows)

    def _forward(self, rows: int, seq: int) -> None:
        assert self._ws is not None
        with self.stream:
            self.encoder.forward(self._ws.view(rows, seq))

    def _first_run(self, batch: Batch) -> FloatArray:
        """The first batch of a shape: a cold eager forward, then a capture (warm-up does this
        for every bucket shape, largest first, before the server is ready)."""
        rows, seq = batch.shape
        self._ensure_workspace(rows, seq)
        self._upload(batch)
        state = CupyShape()
        t0 = time.perf_counter()
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

    def _capture(self, state: CupyShape, rows: int, seq: int) -> None:
        t0 = time.perf_counter()
        self.stream.begin_capture()
        try:
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
        self._ws = Workspace(
            self._cp, tokens=tokens, seq=longest, config=self.config, width=self.width
        )
        self._host_in = _pinned(self._cp, 3 * tokens, np.int32)

    def _upload(self, batch: Batch) -> None:
        """ids, mask and type ids into the workspace's input slices: one pinned copy."""
        assert self._ws is not None
        rows, seq = batch.shape
        n = rows * seq
        staged = self._host_in[: 3 * n].reshape(3, rows, seq)
        staged[0] = batch.input_ids
        staged[1] = batch.attention_mask
        staged[2] = batch.token_type_ids
        view = self._ws.view(rows, seq)
        self._cp.cuda.runtime.memcpyAsync(
            view.ids, staged.ctypes.data, 3 * n * _INT, _TO_DEVICE, self.stream.ptr
        )

    def _download(self, rows: int) -> FloatArray:
        assert self._ws is not None
        n = rows * self.width
        if self._host_out.size < n:  # host side only: no graph points here
            self._host_out = _pinned(self._cp, n)
        host = self._host_out[:n]
        self._cp.cuda.runtime.memcpyAsync(
            host.ctypes.data, self._ws.out.data.ptr, n * _FLOAT, _TO_HOST, self.stream.ptr
        )
        self.stream.synchronize()  # the GIL is released while waiting
        # A copy: the pinned buffer is overwritten by the next batch.
        return host.reshape(rows, self.width).copy()

    def _release(self) -> None:
        """Drop every graph and buffer and give cached blocks back to the driver, so that a
        retry at a smaller token budget starts from nothing."""
        cp = self._cp
        self._shapes.clear()
        self._ws = None
        self._host_in = np.empty(0, dtype=np.int32)
        self._host_out = np.empty(0, dtype=np.float32)
        self._host_hidden = np.empty(0, dtype=np.float16)
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
            "implementation": f"native-{self.config.family}",
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
        return shape_report(self._shapes)

    def close(self) -> None:
        if not self.encoder.loaded:
            return  # closed already
        self._release()
        self._blas.close()
        self.encoder.free()
        self._cp.get_default_memory_pool().free_all_blocks()


def _pinned(cp: Any, count: int, dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    """A numpy array of `count` items over page-locked host memory (fast, async copies)."""
    itemsize = np.dtype(dtype).itemsize
    memory = cp.cuda.alloc_pinned_memory(max(count, 1) * itemsize)
    return np.frombuffer(memory, dtype=dtype, count=max(count, 1))
