"""The stage machine: starting → loading → warming → ready | failed; draining on shutdown.

Routes read it; every transition is logged with the time spent in the stage it leaves and
recorded as a metric.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ember import metrics

log = logging.getLogger("ember.lifecycle")


class Stage(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


_ALLOWED: dict[Stage, set[Stage]] = {
    Stage.STARTING: {Stage.LOADING, Stage.FAILED, Stage.DRAINING},
    Stage.LOADING: {Stage.WARMING, Stage.READY, Stage.FAILED, Stage.DRAINING},
    Stage.WARMING: {Stage.READY, Stage.FAILED, Stage.DRAINING},
    Stage.READY: {Stage.DRAINING, Stage.FAILED},
    Stage.FAILED: {Stage.DRAINING},
    Stage.DRAINING: set(),
}


@dataclass
class Lifecycle:
    """The stage of one model (or of the whole server), thread-safe."""

    name: str = "server"
    stage: Stage = Stage.STARTING
    error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    durations: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each finished stage."""
    _entered: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        metrics.set_stage(self.name, self.stage.value)

    def to(self, stage: Stage, *, error: str | None = None) -> bool:
        """Move to `stage`; False (and no change) if the move is not allowed from here."""
        with self._lock:
            if stage not in _ALLOWED[self.stage]:
                return False
            now = time.monotonic()
            spent = now - self._entered
            previous = self.stage
            self.durations[previous.value] = spent
            self.stage = stage
            self._entered = now
            if error is not None:
                self.error = error
        metrics.set_stage(self.name, stage.value)
        metrics.STAGE_SECONDS.labels(model=self.name, stage=previous.value).set(spent)
        level = logging.ERROR if stage is Stage.FAILED else logging.INFO
        log.log(
            level,
            "%s: %s → %s after %.3f s%s",
            self.name,
            previous.value,
            stage.value,
            spent,
            f": {error}" if error else "",
            extra={
                "model": self.name,
                "from_stage": previous.value,
                "stage": stage.value,
                "seconds": round(spent, 4),
            },
        )
        return True

    @property
    def ready(self) -> bool:
        return self.stage is Stage.READY

    @property
    def since_start(self) -> float:
        return time.monotonic() - self.started_at

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage.value}
        if self.error:
            out["error"] = self.error
        return out
