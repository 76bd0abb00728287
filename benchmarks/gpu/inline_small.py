"""Experiment (not the product): run a small batch on the event loop thread, without the hop to
the inference thread and back, when nothing else is queued.

Loaded as `sitecustomize` (PYTHONPATH=benchmarks/gpu/inline) by run_gpu.sh's `*-inline` steps, to
test whether the extra latency of the first request after a pause comes from those two
cross-thread wake-ups (docs/gpu.md). INLINE_ROWS sets the largest batch run inline (default 8).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ember.engine import batcher

_ROWS = int(os.environ.get("INLINE_ROWS", "8"))
_original = batcher.Batcher._run_batch


class _Inline:
    """A stand-in loop whose run_in_executor runs the call at once, on this thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run_in_executor(self, _executor: Any, fn: Any, *args: Any) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future


async def _run_batch(self: Any, loop: asyncio.AbstractEventLoop, group: list[Any]) -> None:
    if len(group) <= _ROWS and not self._queue:
        await _original(self, _Inline(loop), group)
    else:
        await _original(self, loop, group)


batcher.Batcher._run_batch = _run_batch  # type: ignore[method-assign]
