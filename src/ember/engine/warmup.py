"""Warm-up: the plan (which bucket shapes to run), the run through the real batcher, the
out-of-memory fallback and the coverage check, and its report."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ember import metrics
from ember.backends.base import Capabilities, DeviceOutOfMemory, FloatArray
from ember.engine.buckets import Buckets
from ember.engine.loaded import LoadedModel
from ember.engine.tokenizer import Encoded, TextTokenizer
from ember.errors import BackendFailure
from ember.models import Task

log = logging.getLogger("ember.engine")

SEED = "the quick brown fox jumps over the lazy dog"
"""Text whose token ids fill warm-up inputs."""

Plan = Literal["full", "cover"]
RunInputs = Callable[[list[Encoded]], Awaitable[FloatArray]]
"""Admits, batches and runs encoded inputs the way a request does; one row per input."""
RunTokens = Callable[[list[Encoded]], Awaitable[list[FloatArray]]]
"""The same for per-token vectors (`/embed_all`): one (length, hidden) array per input."""


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
    token_shapes: list[ShapeRun] = field(default_factory=list)
    """Per-token outputs (`/embed_all`), a covering subset: the same forward, another output."""
    total_seconds: float = 0.0
    http_seconds: float = 0.0
    """Time of the requests sent through the HTTP app itself (routing, validation, JSON)."""
    covered: bool = False
    """Every planned shape ran, and the batcher emitted nothing else."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape_count"] = len(self.shapes)
        for key, runs in (("shapes", self.shapes), ("token_shapes", self.token_shapes)):
            out[key] = [
                {"rows": s.rows, "seq": s.seq, "seconds": [round(x, 5) for x in s.seconds]}
                for s in runs
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


def choose_plan(setting: str, capabilities: Capabilities) -> Plan:
    """`--warmup-plan`, with `auto` read from the backend: every shape, or a cover."""
    if setting == "auto":
        return "cover" if capabilities.warm == "cover" else "full"
    return "cover" if setting == "cover" else "full"


def warm_input(tokenizer: TextTokenizer, task: Task, seq: int) -> Encoded:
    """An input of exactly `seq` tokens of the kind `task` takes: a pair for rerank, a text for
    embed, and for classify a text unless only a pair can be that short."""
    pair = task is Task.RERANK or (task is Task.CLASSIFY and seq < tokenizer.shortest(pair=False))
    return tokenizer.of_length(seq, pair=pair, seed=SEED)


async def warm_up(
    *, loaded: LoadedModel, plan: Plan, rounds: int, run: RunInputs, run_tokens: RunTokens | None
) -> WarmupReport:
    """Warm every planned shape, and per-token outputs with `run_tokens`. On the backend's
    out-of-memory error, halve the batch token budget and warm again, so that an out-of-memory
    surfaces here, before ready, never on a live request; the buckets then keep the budget
    that fit."""
    oom = loaded.backend.capabilities.oom
    caught: tuple[type[DeviceOutOfMemory], ...] = (oom,) if oom is not None else ()
    while True:
        try:
            report = await _warm_up_once(loaded=loaded, plan=plan, rounds=rounds, run=run)
            if run_tokens is not None:
                await _warm_tokens(loaded=loaded, report=report, run_tokens=run_tokens)
            return report
        except caught as exc:
            budget = loaded.buckets.max_tokens
            lower = max(budget // 2, loaded.buckets.max_length)
            if lower == budget:
                raise BackendFailure(
                    f"out of device memory even at {budget} tokens per batch"
                ) from exc
            log.warning(
                "%s: %s; lowering max_batch_tokens %d -> %d and warming again",
                loaded.spec.name,
                exc.message,
                budget,
                lower,
            )
            loaded.lower_budget(lower)


async def _warm_up_once(
    *, loaded: LoadedModel, plan: Plan, rounds: int, run: RunInputs
) -> WarmupReport:
    """Run each planned shape through tokenizer → batcher → backend; check each output, and
    that the batcher emitted exactly the planned shapes."""
    name, task = loaded.spec.name, loaded.spec.task
    buckets, batcher = loaded.buckets, loaded.batcher
    shapes = plan_shapes(buckets, plan)
    report = WarmupReport(model=name, task=task.value, rounds=rounds, plan=plan)
    width = loaded.backend.capabilities.output_width
    started = time.perf_counter()
    batcher.shapes_run.clear()
    # One input per length, repeated for the rows: building `rows` copies added ~0.35 s to a
    # GPU warm-up of 44 shapes and warms nothing more.
    inputs = {seq: warm_input(loaded.tokenizer, task, seq) for seq in {s for _, s in shapes}}
    for rows, seq in shapes:
        shape_run = ShapeRun(rows=rows, seq=seq)
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = await run([inputs[seq]] * rows)
            shape_run.seconds.append(time.perf_counter() - t0)
            if out.shape != (rows, width) or not np.isfinite(out).all():
                raise BackendFailure(
                    f"warm-up shape {rows}x{seq} returned {out.shape}, "
                    f"expected {(rows, width)} of finite values"
                )
        metrics.WARMUP_SHAPE_SECONDS.labels(
            model=name, task=task.value, rows=str(rows), seq=str(seq)
        ).set(max(shape_run.seconds))
        report.shapes.append(shape_run)
    report.total_seconds = time.perf_counter() - started
    emitted = set(batcher.shapes_run)
    report.covered = emitted == set(shapes)
    report.shape_set = len(buckets.shapes())
    if not report.covered:
        missing = sorted(set(shapes) - emitted)
        extra = sorted(emitted - set(shapes))
        raise BackendFailure(
            f"warm-up did not cover the shape set: missing {missing[:5]}, unplanned {extra[:5]}"
        )
    metrics.WARMUP_SECONDS.labels(model=name).set(report.total_seconds)
    metrics.WARMUP_SHAPES.labels(model=name).set(len(shapes))
    log.info(
        "%s: warmed %d shapes x %d rounds in %.3f s",
        name,
        len(shapes),
        rounds,
        report.total_seconds,
        extra={"model": name, "warmup": report.to_dict()},
    )
    return report


async def _warm_tokens(*, loaded: LoadedModel, report: WarmupReport, run_tokens: RunTokens) -> None:
    """Run per-token outputs (`/embed_all`) once the pooled shapes are warm. The encoder's
    shapes are warm by then and fetching the other output is not a cold run (ORT, torch on CPU:
    the first /embed_all of each size costs what later ones do, RESULTS.md session 18), so the
    shortest shape runs the path on CPU; on CUDA the largest runs too (ms there), so that its
    host buffer is allocated before ready. Running the largest on CPU added ~0.5 s to ready."""
    started = time.perf_counter()
    shapes = plan_shapes(loaded.buckets, "cover")
    for rows, seq in shapes if loaded.backend.capabilities.device == "cuda" else shapes[-1:]:
        t0 = time.perf_counter()
        out = await run_tokens([warm_input(loaded.tokenizer, loaded.spec.task, seq)] * rows)
        report.token_shapes.append(ShapeRun(rows=rows, seq=seq, seconds=[time.perf_counter() - t0]))
        if len(out) != rows or any(
            a.ndim != 2 or a.shape[0] != seq or not np.isfinite(a).all() for a in out
        ):
            raise BackendFailure(
                f"warm-up of per-token outputs at {rows}x{seq} returned bad arrays"
            )
    report.total_seconds += time.perf_counter() - started
