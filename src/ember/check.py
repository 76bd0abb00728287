"""`ember check`: load, warm up and run one request per model; exit 0 only if all pass.

The command a CI/CD pipeline or an image build runs to prove the artifact serves.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import numpy as np
import orjson

from ember.engine.model import ModelEngine
from ember.engine.registry import Engines
from ember.models import Task
from ember.settings import Settings


async def _smoke(model: ModelEngine) -> dict[str, Any]:
    started = time.perf_counter()
    if model.task is Task.EMBED:
        result = await model.embed(["ember check", "a second, longer sentence to embed"])
        norms = np.linalg.norm(result.rows, axis=1)
        ok = result.rows.shape[0] == 2 and bool(np.allclose(norms, 1.0, atol=1e-3))
        detail = f"2 vectors of {result.rows.shape[1]} dims"
    elif model.task is Task.RERANK:
        result = await model.rerank("what is ember?", ["ember is a server", "bananas"])
        ok = result.rows.shape == (2, 1) and bool(np.isfinite(result.rows).all())
        detail = f"scores {result.rows[:, 0].round(4).tolist()}"
    else:
        result = await model.classify(["ember check"])
        ok = result.rows.shape == (1, len(model.spec.labels))
        ok = ok and bool(np.isclose(result.rows.sum(), 1.0, atol=1e-3))
        detail = f"{len(model.spec.labels)} labels"
    return {
        "model": model.spec.name,
        "task": model.task.value,
        "ok": ok,
        "detail": detail,
        "seconds": round(time.perf_counter() - started, 4),
    }


async def _check(settings: Settings) -> dict[str, Any]:
    engines = Engines(settings)
    try:
        await engines.start()
        report: dict[str, Any] = {
            "stage": engines.stage.value,
            "error": engines.lifecycle.error,
            "ready_seconds": engines.ready_seconds,
            "models": [m.describe() for m in engines.models],
            "smoke": [],
        }
        if engines.ready:
            report["smoke"] = [await _smoke(m) for m in engines.models]
        report["ok"] = engines.ready and all(s["ok"] for s in report["smoke"])
        return report
    finally:
        await engines.stop()


def run_check(settings: Settings, *, as_json: bool = False) -> int:
    from ember import logs

    logs.setup(level=settings.log_level, json_logs=settings.json_logs)
    report = asyncio.run(_check(settings))
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"stage: {report['stage']}  ready in {report['ready_seconds'] or 0:.2f} s")
        if report["error"]:
            print(f"error: {report['error']}")
        for model in report["models"]:
            warm = model.get("warmup") or {}
            print(
                f"  {model['model_id']} ({model['task']}, {model.get('backend')}): "
                f"{warm.get('shape_count', 0)} shapes warmed in {warm.get('total_seconds', 0)} s"
            )
        for smoke in report["smoke"]:
            mark = "ok" if smoke["ok"] else "FAILED"
            print(f"  smoke {smoke['model']}: {mark} ({smoke['detail']}, {smoke['seconds']} s)")
        print("check passed" if report["ok"] else "check FAILED")
    return 0 if report["ok"] else 1
