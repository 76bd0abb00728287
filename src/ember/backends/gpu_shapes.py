"""What both CUDA backends (torch's `GraphRunner`, CuPy) keep per bucket shape, how they report
it, and how either turns a device out-of-memory into `DeviceOutOfMemory`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ember.backends.base import Batch, DeviceOutOfMemory, FloatArray, is_oom
from ember.errors import BackendFailure

log = logging.getLogger("ember.backends")

G = TypeVar("G")
"""The framework's graph type (torch.cuda.CUDAGraph, cupy.cuda.graph.Graph)."""
T = TypeVar("T")
"""The framework's device array type."""


@dataclass(slots=True)
class ShapeState(Generic[G, T]):
    """One (rows, seq) shape after its first batch: its graph (None: it runs eagerly) and the
    milliseconds its first batch took, step by step."""

    graph: G | None = None
    inputs: T | None = None
    """The shape's own input buffer, where a graph reads from one (torch); None where all
    shapes share a workspace (CuPy)."""
    output: T | None = None
    """The graph's static output, where it has its own (torch)."""
    first_ms: float = 0.0
    """First eager forward (cold kernels), capture excluded."""
    eager_ms: float | None = None
    """A second, warm eager forward, where one was timed to choose graph or eager."""
    capture_ms: float | None = None
    graph_ms: float | None = None
    """The first replay."""


def shape_report(shapes: Mapping[tuple[int, int], ShapeState[Any, Any]]) -> list[dict[str, Any]]:
    """Per shape, for `/info` and benchmarks: first eager, (warm eager,) capture and replay ms."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    report = []
    for (rows, seq), st in sorted(shapes.items()):
        row: dict[str, Any] = {"rows": rows, "seq": seq, "first_ms": ms(st.first_ms)}
        if st.eager_ms is not None:
            row["eager_ms"] = ms(st.eager_ms)
        row |= {"capture_ms": ms(st.capture_ms), "graph_ms": ms(st.graph_ms)}
        row["graph"] = st.graph is not None
        report.append(row)
    return report


def run_or_raise_oom(
    run: Callable[[Batch], FloatArray],
    batch: Batch,
    *,
    oom_types: tuple[type[BaseException], ...],
    release: Callable[[], None],
) -> FloatArray:
    """`run(batch)`; on a device out-of-memory (`is_oom`), `release()` what the backend cached
    and raise `DeviceOutOfMemory`, so that warm-up retries at a smaller token budget."""
    rows, seq = batch.shape
    try:
        return run(batch)
    except BackendFailure:
        raise  # already ember's own (DeviceOutOfMemory among them)
    except Exception as exc:
        if not is_oom(exc, *oom_types):
            raise
        log.info("out of memory at %dx%d: %s", rows, seq, exc)
    # Outside the handler: the error's traceback holds the failed forward's frames and their
    # buffers, which must be freed before the retry.
    release()
    raise DeviceOutOfMemory(f"the GPU ran out of memory for a batch of {rows}x{seq} tokens")
