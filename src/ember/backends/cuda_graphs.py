"""Run a padded batch on CUDA: static buffers per bucket shape, and a CUDA graph per shape where
its replay measures faster than the eager forward.

The batcher pads every batch to a bucket, so the shapes are few and known, and warm-up runs each
one (largest first) before the server is ready. The first batch of a shape does, in order: a
cold eager forward (first use of the shape's kernels and cuBLAS heuristics, allocator growth), a
timed eager forward, a capture into the memory pool all graphs share, and a timed replay; the
graph is kept if its replay was faster. Sharing one pool is safe because batches run one at a
time and each output is copied to the host before the next batch starts (`Backend.run` is called
from one worker thread at a time).

Host side: one pinned input buffer (ids, mask and type ids in one block, one host-to-device copy)
and one pinned output buffer; a batch costs one copy in, one replay, one copy out and one sync.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.backends.base import Batch, FloatArray
from ember.backends.base import is_oom as _is_oom
from ember.backends.gpu_shapes import ShapeState, run_or_raise_oom, shape_report

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ember.backends.torch")

Forward = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""(input_ids, attention_mask, token_type_ids), int64 (rows, seq) on the device → float32
(rows, width) on the device."""


TorchShape = ShapeState["torch.cuda.CUDAGraph", "torch.Tensor"]
"""A shape's graph (kept only where its replay beat the eager forward), its own (3, rows, seq)
int64 input buffer (ids, mask, type ids; the graph reads from there), its static output and
timings."""


def is_oom(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or during, is a CUDA out-of-memory."""
    import torch

    return _is_oom(exc, torch.OutOfMemoryError)


class GraphRunner:
    """Runs `forward` on CUDA for padded batches; see the module docstring."""

    def __init__(self, *, forward: Forward, device: str, width: int, graphs: bool = True) -> None:
        import torch

        self._torch = torch
        self._forward = forward
        self.device = torch.device(device)
        self.width = width
        self.graphs_enabled = graphs
        self._shapes: dict[tuple[int, int], TorchShape] = {}
        self._pool: Any = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        self._host_in = torch.empty(3 * 4096, dtype=torch.int64).pin_memory()
        self._host_in_np: np.ndarray = self._host_in.numpy()
        self._host_out = torch.empty(256 * max(width, 1), dtype=torch.float32).pin_memory()
        self._stream_ready = False
        self.capture_failures = 0

    # --- serving ------------------------------------------------------------------------

    def run(self, batch: Batch) -> FloatArray:
        oom = (self._torch.OutOfMemoryError,)
        return run_or_raise_oom(self._run, batch, oom_types=oom, release=self._release_after_oom)

    def _run(self, batch: Batch) -> FloatArray:
        state = self._shapes.get(batch.shape)
        if state is None:
            return self._first_run(batch)
        assert state.inputs is not None
        self._upload(batch, state.inputs)
        if state.graph is not None:
            state.graph.replay()
            assert state.output is not None
            return self._download(state.output)
        return self._download(self._eager(state.inputs))

    def _upload(self, batch: Batch, inputs: torch.Tensor) -> None:
        rows, seq = batch.shape
        n = rows * seq
        if self._host_in.numel() < 3 * n:
            self._host_in = self._torch.empty(3 * n, dtype=self._torch.int64).pin_memory()
            self._host_in_np = self._host_in.numpy()
        staged = self._host_in_np[: 3 * n].reshape(3, rows, seq)
        staged[0] = batch.input_ids
        staged[1] = batch.attention_mask
        staged[2] = batch.token_type_ids
        inputs.copy_(self._host_in[: 3 * n].view(3, rows, seq), non_blocking=True)

    def _download(self, output: torch.Tensor) -> FloatArray:
        n = output.numel()
        if self._host_out.numel() < n:
            self._host_out = self._torch.empty(n, dtype=self._torch.float32).pin_memory()
        host = self._host_out[:n].view(output.shape)
        host.copy_(output, non_blocking=True)
        self._torch.cuda.current_stream(self.device).synchronize()
        # A copy: the pinned buffer is overwritten by the next batch.
        array: FloatArray = host.numpy().copy()
        return array

    def _eager(self, inputs: torch.Tensor) -> torch.Tensor:
        with self._torch.inference_mode():
            return self._forward(inputs[0], inputs[1], inputs[2])

    # --- the first batch of a shape -------------------------------------------------------

    def _first_run(self, batch: Batch) -> FloatArray:
        torch = self._torch
        rows, seq = batch.shape
        inputs = torch.empty((3, rows, seq), dtype=torch.int64, device=self.device)
        self._upload(batch, inputs)
        state = TorchShape(inputs=inputs)
        current = torch.cuda.current_stream(self.device)
        if self.graphs_enabled and not self._stream_ready:
            # Capture runs on a side stream; a tiny forward there first creates that stream's
            # cuBLAS handle and workspace outside any capture.
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                self._eager(inputs[:, :1, : min(seq, 8)].contiguous())
            self._stream.synchronize()
            self._stream_ready = True
        t0 = time.perf_counter()
        out = self._eager(inputs)
        current.synchronize()
        state.first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        out = self._eager(inputs)
        current.synchronize()
        eager_ms = state.eager_ms = (time.perf_counter() - t0) * 1000
        if self.graphs_enabled:
            self._capture(state, inputs, eager_ms=eager_ms)
        self._shapes[(rows, seq)] = state
        if state.graph is not None and state.output is not None:
            return self._download(state.output)
        return self._download(out)

    def _capture(self, state: TorchShape, inputs: torch.Tensor, *, eager_ms: float) -> None:
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        # capture_begin/end rather than `torch.cuda.graph(...)`: that context manager empties
        # the allocator's cache before every capture, so each later shape (and every eager
        # shape after warm-up) would allocate from the driver again.
        try:
            with torch.inference_mode(), torch.cuda.stream(self._stream):
                graph.capture_begin(self._pool, capture_error_mode="thread_local")
                try:
                    output = self._forward(inputs[0], inputs[1], inputs[2])
                except BaseException:
                    # End the broken capture quietly; the forward's own error is the one to see.
                    with warnings.catch_warnings(), contextlib.suppress(Exception):
                        warnings.simplefilter("ignore")
                        graph.capture_end()
                    raise
                graph.capture_end()
        except Exception as exc:
            if is_oom(exc):
                raise
            self.capture_failures += 1
            if self.capture_failures == 1:
                log.warning("CUDA graph capture failed (%s); this shape runs eagerly", exc)
            torch.cuda.synchronize(self.device)
            return
        state.capture_ms = (time.perf_counter() - t0) * 1000
        current = torch.cuda.current_stream(self.device)
        t0 = time.perf_counter()
        graph.replay()
        current.synchronize()
        state.graph_ms = (time.perf_counter() - t0) * 1000
        # Keep the graph only where it measured faster (otherwise the caller answers this
        # batch from the timed eager forward, whose output lives outside the pool).
        if state.graph_ms < eager_ms:
            state.graph = graph
            state.output = output

    def _release_after_oom(self) -> None:
        """Drop every graph and static buffer and return cached blocks to the driver, so that a
        retry at a smaller token budget starts from an empty pool."""
        torch = self._torch
        self._shapes.clear()
        self._pool = torch.cuda.graph_pool_handle()
        import gc

        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    # --- reporting ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        graphs = sorted(s for s, st in self._shapes.items() if st.graph is not None)
        eager = sorted(s for s, st in self._shapes.items() if st.graph is None)
        return {
            "cuda_graphs": self.graphs_enabled,
            "graph_shapes": len(graphs),
            "eager_shapes": len(eager),
            "graph_capture_failures": self.capture_failures,
            "gpu": torch.cuda.get_device_name(self.device),
            "gpu_memory_reserved_mib": round(torch.cuda.memory_reserved(self.device) / 2**20, 1),
        }

    def shape_report(self) -> list[dict[str, Any]]:
        """Per shape: first eager, steady eager, capture and replay milliseconds (benchmarks)."""
        return shape_report(self._shapes)
