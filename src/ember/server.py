"""`ember serve`: start loading first, then import the web stack and bind the port."""

from __future__ import annotations

import os

from ember import logs
from ember.settings import Settings


def serve(settings: Settings) -> int:
    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    logs.setup(level=settings.log_level, json_logs=settings.json_logs, secrets=[secret])
    if settings.reload:
        return _serve_reload(settings)
    from ember import early, gpus

    devices = gpus.worker_plan(settings)
    if len(devices) > 1:
        from ember.workers import supervise

        return supervise(settings, devices, early.take(host=settings.host, port=settings.port))
    from ember.engine.registry import Engines

    engines = Engines(settings)
    early.describe_with(engines.snapshot)
    # Load on a thread now: creating the inference session (which releases the GIL) overlaps
    # importing FastAPI and uvicorn. The port still opens before loading finishes.
    engines.preload()
    from ember.http.app import create_app
    from ember.http.serving import run

    app = create_app(settings, engines=engines)
    # The socket `python -m ember` bound before importing anything heavy, if it did.
    sock = early.take(host=settings.host, port=settings.port)
    run(app, settings, sockets=[sock] if sock else None)
    return logs.exit_now(0)


def _serve_reload(settings: Settings) -> int:
    """Under the reloader the parent only watches files; the worker builds the app (and loads
    the model) in `app_from_env`, so the model is never loaded twice."""
    for name, raw in settings.model_dump(exclude={"reload"}, exclude_defaults=True).items():
        value = raw.get_secret_value() if name == "api_key" and raw is not None else raw
        os.environ[f"EMBER_{name.upper()}"] = (
            ",".join(map(str, value)) if isinstance(value, list) else str(value)
        )
    from ember.http.serving import run_reload

    run_reload(settings)
    return 0
