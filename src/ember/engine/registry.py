"""All served models, their shared lifecycle and the order they load and warm in."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ember import metrics
from ember.backends.base import Backend
from ember.engine.heap import release_free_heap
from ember.engine.loaded import BackendFactory
from ember.engine.model import ModelEngine
from ember.errors import EmberError, InvalidInput, NotReady, UnknownModel, WrongTask
from ember.lifecycle import Lifecycle, Stage
from ember.models import ModelSpec, Task, inspect_model, parse_model_arg
from ember.settings import Settings

log = logging.getLogger("ember.engine")

__all__ = ["BackendFactory", "Engines", "resolve_specs"]

WarmHook = Callable[["Engines"], Awaitable[float]]


def _default_factory(spec: ModelSpec, settings: Settings) -> Backend:
    from ember.backends.loader import create_backend

    return create_backend(spec, settings)


def resolve_specs(settings: Settings) -> list[ModelSpec]:
    """Inspect every `--model` (or the built-in) and check that served names are unique."""
    args = settings.model or ["builtin"]
    specs: list[ModelSpec] = []
    for arg in args:
        name, source = parse_model_arg(arg)
        if name is None and len(args) == 1 and settings.served_model_name:
            name = settings.served_model_name[0]
        specs.append(
            inspect_model(
                source,
                name=name,
                pooling=settings.pooling,
                max_input_length=settings.max_input_length,
                dense_path=settings.dense_path,
            )
        )
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"served model names must be unique: {', '.join(duplicates)}")
    return specs


class Engines:
    """The models of one server process. Loading runs in the background; routes read stages."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = Lifecycle(name="server")
        self.models: list[ModelEngine] = []
        self._factory = backend_factory or _default_factory
        self.http_warm_hook: WarmHook | None = None
        self.ready_seconds: float | None = None
        self._preload: concurrent.futures.Future[None] | None = None
        self._loading: ModelEngine | None = None

    @property
    def stage(self) -> Stage:
        return self.lifecycle.stage

    @property
    def ready(self) -> bool:
        return self.lifecycle.stage is Stage.READY

    def preload(self) -> concurrent.futures.Future[None]:
        """Start resolving and loading every model on a thread, once; returns its future.

        `serve` calls this before importing the web stack, so session creation (which releases
        the GIL) overlaps those imports; `start` then only waits for it.
        """
        if self._preload is None:
            self.lifecycle.to(Stage.LOADING)
            self._preload = concurrent.futures.Future()
            thread = threading.Thread(target=self._load_all, name="ember-load", daemon=True)
            thread.start()
        return self._preload

    def _load_all(self) -> None:
        assert self._preload is not None
        try:
            specs = resolve_specs(self.settings)
            self.models = [ModelEngine(spec=s, settings=self.settings) for s in specs]
            if len(self.models) == 1:
                self.models[0].names = tuple(
                    dict.fromkeys([specs[0].name, *self.settings.served_model_name])
                )
            metrics.prime((m.spec.name, m.task.value) for m in self.models)
            for model in self.models:
                self._loading = model
                model.lifecycle.to(Stage.LOADING)
                model.load(self._factory)
            self._loading = None
        except BaseException as exc:
            self._preload.set_exception(exc)
        else:
            self._preload.set_result(None)

    async def start(self) -> None:
        """starting → loading → warming → ready, or failed with the error. Never raises."""
        current: ModelEngine | None = None
        try:
            preload = self.preload()
            await asyncio.wrap_future(preload)
            for model in self.models:
                model.start()
            if self.lifecycle.stage is Stage.DRAINING:
                return
            self.lifecycle.to(Stage.WARMING)
            for model in self.models:
                current = model
                if self.settings.warmup:
                    model.lifecycle.to(Stage.WARMING)
                    await model.warm_up()
                model.lifecycle.to(Stage.READY)
            current = None
            if self.settings.warmup and self.http_warm_hook is not None:
                seconds = await self.http_warm_hook(self)
                for model in self.models:
                    if model.warmup_report is not None:
                        model.warmup_report.http_seconds = seconds
        except Exception as exc:
            current = current or self._loading
            message = exc.message if isinstance(exc, EmberError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, EmberError):
                log.exception("loading failed")
            if current is not None:
                message = f"{current.spec.name}: {message}"
                current.lifecycle.to(Stage.FAILED, error=message)
            self.lifecycle.to(Stage.FAILED, error=message)
            return
        # Hand the heap that loading freed (export, import-time garbage) back before ready, so
        # RSS at ready is what serving holds.
        release_free_heap()
        self.ready_seconds = self.lifecycle.since_start
        self.lifecycle.to(Stage.READY)

    def drain(self) -> None:
        self.lifecycle.to(Stage.DRAINING)
        for model in self.models:
            model.lifecycle.to(Stage.DRAINING)

    async def stop(self) -> None:
        for model in self.models:
            await model.stop()

    def in_flight(self) -> int:
        """Inputs admitted and not yet answered, over every model."""
        return sum(m.queued_inputs for m in self.models)

    def select(self, task: Task, name: str | None = None) -> ModelEngine:
        """The model for a request: the one `name` names (its served name or an alias); else
        the only model of `task`, whatever `name` says unless `--strict-model-names` (OpenAI
        clients send their own defaults, such as `text-embedding-3-small`)."""
        if self.lifecycle.stage is Stage.DRAINING:
            raise NotReady("the server is shutting down", retry_after=1)
        if not self.models:
            raise NotReady(f"the server is {self.lifecycle.stage.value}", retry_after=1)
        if name:
            for model in self.models:
                if name in model.names:
                    return model
        of_task = [m for m in self.models if m.task is task]
        if name and (self.settings.strict_model_names or len(of_task) != 1):
            known = ", ".join(m.spec.name for m in self.models)
            raise UnknownModel(f"model {name!r} is not served here; served: {known}")
        if len(of_task) == 1:
            return of_task[0]
        if not of_task:
            if len(self.models) == 1:
                return self.models[0]  # `require` answers 424 naming the model's task
            served = ", ".join(f"{m.spec.name} ({m.task.value})" for m in self.models)
            raise WrongTask(f"no served model does {task.value}; served: {served}")
        names = ", ".join(m.spec.name for m in of_task)
        raise InvalidInput(f"several models do {task.value} ({names}); name one with `model`")

    def first(self) -> ModelEngine | None:
        return self.models[0] if self.models else None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.lifecycle.stage.value}
        if self.lifecycle.error:
            out["error"] = self.lifecycle.error
        out["models"] = [
            {"name": m.spec.name, "task": m.task.value, **m.lifecycle.snapshot()}
            for m in self.models
        ]
        out["uptime_seconds"] = round(self.lifecycle.since_start, 3)
        return out

    def timing(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.lifecycle.durations.items()} | {
            "now": round(time.monotonic() - self.lifecycle.started_at, 4)
        }
