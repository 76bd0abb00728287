"""The backend boundary: a padded batch in, one float32 row per input out."""

from __future__ import annotations

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
