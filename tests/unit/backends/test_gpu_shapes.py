"""What both CUDA backends share, without a GPU: the out-of-memory path and the shape report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ember.backends.base import Batch, DeviceOutOfMemory, FloatArray
from ember.backends.gpu_shapes import ShapeState, run_or_raise_oom, shape_report
from ember.errors import BackendFailure

BATCH = Batch(
    input_ids=np.zeros((4, 16), dtype=np.int64),
    attention_mask=np.ones((4, 16), dtype=np.int64),
    token_type_ids=np.zeros((4, 16), dtype=np.int64),
    real_rows=4,
)


class FrameworkOOM(Exception):
    """Stands in for torch.OutOfMemoryError / cupy's OutOfMemoryError."""


def failing(exc: BaseException) -> Callable[[Batch], FloatArray]:
    def run(batch: Batch) -> FloatArray:
        raise exc

    return run


@pytest.mark.parametrize(
    "exc",
    [FrameworkOOM("no room"), RuntimeError("CUBLAS_STATUS_ALLOC_FAILED: out of memory")],
    ids=["framework type", "message"],
)
def test_an_oom_releases_and_becomes_device_out_of_memory(exc: Exception) -> None:
    released: list[bool] = []
    with pytest.raises(DeviceOutOfMemory, match="4x16"):
        run_or_raise_oom(
            failing(exc), BATCH, oom_types=(FrameworkOOM,), release=lambda: released.append(True)
        )
    assert released == [True]


@pytest.mark.parametrize("exc", [ValueError("bad shape"), BackendFailure("already ours")])
def test_other_errors_pass_through_without_release(exc: Exception) -> None:
    released: list[bool] = []
    with pytest.raises(type(exc)):
        run_or_raise_oom(
            failing(exc), BATCH, oom_types=(FrameworkOOM,), release=lambda: released.append(True)
        )
    assert released == []


def test_shape_report_lists_shapes_in_order_with_what_was_timed() -> None:
    eager_only: ShapeState[str, None] = ShapeState(first_ms=12.34567)
    graphed: ShapeState[str, None] = ShapeState(
        graph="g", first_ms=3.0, eager_ms=1.0, capture_ms=2.0, graph_ms=0.25
    )
    report = shape_report({(8, 64): graphed, (1, 16): eager_only})
    assert report == [
        {"rows": 1, "seq": 16, "first_ms": 12.346, "capture_ms": None, "graph_ms": None,
         "graph": False},
        {"rows": 8, "seq": 64, "first_ms": 3.0, "eager_ms": 1.0, "capture_ms": 2.0,
         "graph_ms": 0.25, "graph": True},
    ]  # fmt: skip
