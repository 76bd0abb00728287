"""Giving freed heap back to the OS: glibc keeps what a burst freed unless asked to trim."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_free_heap() -> None:
    """`malloc_trim(0)`: return free pages of every malloc arena to the OS (a no-op where the
    C library is not glibc). Takes milliseconds; call it off the event loop or before ready."""
    libc = _libc()
    if libc is None:
        return
    with contextlib.suppress(AttributeError):  # not glibc: no malloc_trim
        libc.malloc_trim(0)
