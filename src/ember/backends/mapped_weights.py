"""A safetensors checkpoint read through a memory map, for writing its tensors out one block
at a time (`onnx_graph`): peak memory stays near one block, not the checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from ember.errors import ModelError

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@contextmanager
def open_weights(file: Path) -> Iterator[tuple[dict[str, Any], int, Callable[[], None]]]:
    """A safetensors file's tensors as read-only numpy views of one memory map, their size in
    float32 bytes, and a function that drops the pages read so far from this process (they
    stay in the page cache): nothing is read until a tensor is written, and what was written
    leaves RSS (peak memory: a 2.26 GB checkpoint was read whole, then copied whole into the
    graph). Raises ModelError for a damaged file, ValueError for a dtype numpy cannot hold."""
    import mmap

    import ml_dtypes
    import numpy as np

    try:
        with file.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelError(f"cannot load weights from {file}: not safetensors ({exc})") from None
    tensors: dict[str, Any] = {}
    nbytes = 0
    try:
        try:
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                kind = _SAFETENSORS_DTYPES.get(str(info["dtype"]))
                if kind is None:
                    raise ValueError(f"weight {name} has dtype {info['dtype']}")
                dtype = np.dtype(ml_dtypes.bfloat16 if kind == "bfloat16" else kind)
                begin, end = (int(v) for v in info["data_offsets"])
                shape = tuple(int(v) for v in info["shape"])
                count = math.prod(shape)
                if end - begin != count * dtype.itemsize or 8 + size + end > len(mapped):
                    raise ModelError(f"cannot load weights from {file}: truncated or damaged")
                array = np.frombuffer(mapped, dtype=dtype, count=count, offset=8 + size + begin)
                tensors[name] = array.reshape(shape)
                nbytes += count * 4
        except (KeyError, TypeError, AttributeError) as exc:  # a header entry of another shape
            raise ModelError(f"cannot load weights from {file}: damaged header ({exc})") from None
        yield tensors, nbytes, lambda: mapped.madvise(mmap.MADV_DONTNEED)
    finally:
        tensors.clear()
        # Arrays still viewing the map keep it open until they are collected; its pages are
        # dropped from this process now all the same.
        mapped.madvise(mmap.MADV_DONTNEED)
        with suppress(BufferError):
            mapped.close()


_CHUNK_BYTES = 16 << 20


def write_rows(out: BinaryIO, array: Any, release: Callable[[], None]) -> None:
    """Write `array` in C order a block of rows at a time, calling `release` after each: a
    mapped weight is read from the file one block at a time and leaves RSS block by block."""
    import numpy as np

    step = max(1, _CHUNK_BYTES // max(1, array[0].nbytes)) if array.ndim else 1
    for start in range(0, len(array) if array.ndim else 1, step):
        block = array[start : start + step] if array.ndim else array
        out.write(np.ascontiguousarray(block).data)
        release()
