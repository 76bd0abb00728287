"""Disk space for `ember prepare`: what an artifact needs, checked before building, and a disk
that fills up while building reported as such (not as whatever the next reader trips on)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from ember.errors import ModelError

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HALF = ("float16", "bfloat16")
FULL_BELOW = 1 << 20
"""Free bytes under which a failed prepare is blamed on the disk even without an ENOSPC error
(ORT's C++ writers report a short write as a bad protobuf later on)."""


def fp32_weight_bytes(folder: Path) -> int:
    """The model's weights as float32, estimated from its weight files (safetensors or torch
    pickles; where a folder holds both, the larger set)."""
    sums = [sum(f.stat().st_size for f in folder.rglob(p) if f.is_file()) for p in _WEIGHT_PATTERNS]
    size = max(sums)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    dtype = (
        str(config.get("torch_dtype") or config.get("dtype") or "")
        if isinstance(config, dict)
        else ""
    )
    return size * 2 if dtype in _HALF else size


GRAPH_SLACK = 0.05
"""Intermediate graphs hold a little more than the weights (constants, shapes): measured 0.4 %
on a tiny BERT, where a few KB of them weigh most."""


def bytes_needed(folder: Path) -> int:
    """Peak disk of a prepare: every graph pass writes its output once beside its input, which
    is then deleted, so at most two fp32 copies of the weights exist at a time (plus a slack,
    and the tokenizer files copied at the end)."""
    weights = fp32_weight_bytes(folder)
    tokenizer = sum(f.stat().st_size for f in folder.glob("*token*") if f.is_file())
    return 2 * weights + int(weights * GRAPH_SLACK) + tokenizer


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def space_message(*, folder: Path, needed: int, free: int) -> str:
    return (
        f"not enough disk space in {folder} to prepare the model: it needs about {_gib(needed)} "
        f"({needed} bytes: twice the float32 weights and the tokenizer) and {_gib(free)} "
        f"({free} bytes) is free"
    )


def check_space(folder: Path, needed: int) -> None:
    """Raise `ModelError` before any work if `folder`'s file system cannot hold `needed` bytes."""
    free = free_bytes(folder)
    if free < needed:
        raise ModelError(space_message(folder=folder, needed=needed, free=free))


def ran_out_of_space(exc: BaseException, free: int) -> bool:
    """Whether `exc` (or what caused it) is a full disk or quota, or the disk is full now."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return free < FULL_BELOW
