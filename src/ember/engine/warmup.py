"""The warm-up plan (the bucket shape set) and its report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ember.engine.buckets import Buckets


@dataclass(kw_only=True)
class ShapeRun:
    rows: int
    seq: int
    seconds: list[float] = field(default_factory=list)
    """One entry per round."""


@dataclass(kw_only=True)
class WarmupReport:
    model: str
    task: str
    rounds: int
    plan: str
    """`full`: every shape of the bucket set ran; `cover`: the covering subset."""
    shape_set: int = 0
    """How many shapes the batcher can emit in all."""
    shapes: list[ShapeRun] = field(default_factory=list)
    total_seconds: float = 0.0
    http_seconds: float = 0.0
    """Time of the requests sent through the HTTP app itself (routing, validation, JSON)."""
    covered: bool = False
    """Every planned shape ran, and the batcher emitted nothing else."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape_count"] = len(self.shapes)
        out["shapes"] = [
            {"rows": s.rows, "seq": s.seq, "seconds": [round(x, 5) for x in s.seconds]}
            for s in self.shapes
        ]
        out["total_seconds"] = round(self.total_seconds, 4)
        out["http_seconds"] = round(self.http_seconds, 4)
        return out


def plan_shapes(buckets: Buckets, plan: str = "full") -> list[tuple[int, int]]:
    """The shapes warm-up runs, largest first (so memory peaks first: an out-of-memory surfaces
    at startup, and the allocator is grown once).

    `full` is every shape the batcher can emit. `cover` is the largest shape (the arena grows
    to its peak once), one row at the longest length and one at the shortest: on CPU, after
    that, no other shape is cold (measured by `benchmarks/cold_shapes.py`, which runs every
    shape of the set after this plan; RESULTS.md has the figures).
    """
    shapes = buckets.shapes()
    if plan == "full":
        return shapes
    chosen = {shapes[0], (1, buckets.seq[-1]), (1, buckets.seq[0])}
    return [shape for shape in shapes if shape in chosen]
