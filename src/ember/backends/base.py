"""The backend boundary: a padded batch in, one float32 row per input out."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from ember.errors import BackendFailure
from ember.models import ModelSpec, Task

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


class DeviceOutOfMemory(BackendFailure):
    """The device had no memory for a batch shape. The backend released what it cached; the
    engine lowers its token budget and warms again (never raised on a live request once warm)."""


def is_oom(exc: BaseException, *types: type[BaseException]) -> bool:
    """Whether `exc`, or an exception it was raised from or during, is an out-of-memory: one of
    `types` (the framework's own OOM class) or a message saying so (CUDA, cuBLAS, NVRTC)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        text = str(seen).lower().replace("_", " ")
        if isinstance(seen, types) or "out of memory" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


GPU_SEQ = (16, 32, 64, 128, 256, 512)
"""Default padded lengths of torch on CUDA: every shape is a separate kernel plan or graph."""
CUPY_SEQ = (*range(16, 256, 16), *range(256, 513, 32))
"""The CuPy backend's padded lengths for batches of CUPY_FINE_ROWS rows or more: steps of 16 to
256, then 32 (202 tokens pad to 208, not 256: on a compute-bound batch padding costs what real
tokens do); smaller batches keep GPU_SEQ. Every shape is a CUDA graph captured at warm-up:
`benchmarks/gpu/attention.py` measures what a set costs to warm (RESULTS-gpu.md, session 18)."""
CUPY_FINE_ROWS = 32
TORCH_CPU_SEQ = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""torch on CPU plans per shape too, but pays for padding like onnx: steps of about 1.5x."""


def output_width(spec: ModelSpec) -> int:
    """Columns a backend returns for `spec`: the pooled width (embed: the last Dense module's
    out_features, the vocabulary for SPLADE, else the hidden size) or one per label."""
    if spec.task is Task.EMBED:
        if spec.dense:
            return spec.dense[-1].out_features
        if spec.splade:
            return int(spec.dimension or 0)
        return int(spec.hidden_size or spec.dimension or 0)
    return max(len(spec.labels), 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend tells the engine about how to batch and warm it (TEI's `Backend` trait
    carries `max_batch_size` / `is_padded` the same way). The engine reads this, never a name."""

    device: Literal["cpu", "cuda"]
    lengths: Literal["exact", "coarse"]
    """`exact`: a batch is padded to its longest input and every length is its own shape (ONNX
    Runtime on CPU: a new shape is not cold). `coarse`: lengths are padded to a few buckets,
    each planned or captured once (oneDNN, CUDA graphs)."""
    seq_buckets: tuple[int, ...] = ()
    """Default padded lengths with `coarse` lengths (capped at the model's max length)."""
    small_batch_seq: tuple[int, ...] = ()
    """Padded lengths for batches of fewer than `fine_rows` padded rows, a subset of
    `seq_buckets` (empty: `seq_buckets` for every batch). A small batch is launch-bound, so
    padding costs it little, while every shape costs a capture at warm-up."""
    fine_rows: int = 0
    """Padded rows from which a batch gets the finer `seq_buckets`."""
    pads_rows: bool = False
    """Rows are padded to power-of-two row buckets (`False`: every row count is a shape)."""
    warm: Literal["all", "cover"] = "all"
    """Which shapes warm-up must run: every one, or a covering subset (largest, longest,
    shortest) after which no shape is cold (`benchmarks/cold_shapes.py`)."""
    output_width: int
    """Columns of `run`'s output: hidden size (embed) or labels (rerank, classify)."""
    max_batch_tokens: int = 1024
    """Default padded tokens per batch (rows x length) when the settings do not say."""
    max_batch_rows: int = 32
    """Default most rows in a batch when the settings do not say."""
    oom: type[DeviceOutOfMemory] | None = None
    """The error `run` raises when a shape does not fit the device; `None`: it never does."""
    token_outputs: bool = False
    """`run_tokens` returns the last hidden state per token (TEI's `/embed_all`); `False`: the
    engine never calls it and the route answers 424."""


class Backend(Protocol):
    """Runs one model. `run` is called from one worker thread at a time."""

    name: str
    capabilities: Capabilities

    def run(self, batch: Batch) -> FloatArray:
        """Pooled, unnormalised embeddings (embed) or logits (rerank, classify): (rows, dim)."""
        ...

    def run_tokens(self, batch: Batch) -> FloatArray:
        """The encoder's last hidden state, before pooling and Dense modules: (rows, seq,
        hidden), padding included. Called only when `capabilities.token_outputs`."""
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
