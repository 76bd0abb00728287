"""The backend boundary: a padded batch in, one float32 row per input out."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Token ids padded to a bucket shape (rows, seq); rows past `real_rows` are padding."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray
    real_rows: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, seq = self.input_ids.shape
        return int(rows), int(seq)


class Backend(Protocol):
    """Runs one model. `run` is called from one worker thread at a time."""

    name: str

    def run(self, batch: Batch) -> FloatArray:
        """Pooled, unnormalised embeddings (embed) or logits (rerank, classify): (rows, dim)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `/info` shows: backend, device, dtype, threads and the like."""
        ...

    def close(self) -> None: ...


GPU_SWITCH_INTERVAL = 0.001
"""Seconds between GIL hand-overs on CUDA (Python's default is 0.005)."""


def use_short_gil_switch() -> None:
    """For GPU backends: the batch thread waits on the GPU with the GIL released and must get
    it back while the event loop thread runs Python; at the default 5 ms switch interval each
    batch waited ~5 ms per hand-over. 1 ms: +33% requests/s at c=32, +49% at c=128 on an H100
    (0.2 ms was slower than 5 ms: docs/gpu.md)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), GPU_SWITCH_INTERVAL))
