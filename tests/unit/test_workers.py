"""`ember serve --workers N`: the settings hand-over and the readiness gate, without processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ember.lifecycle import Stage
from ember.settings import Settings
from ember.workers import _READY, ReadyGate, SharedState, _settings_payload, remove_orphans


def test_settings_reach_a_worker_whole_secret_included() -> None:
    settings = Settings(
        workers=4, port=0, api_key="s3cret", seq_buckets=[16, 64], model=["a=/m/a", "b=/m/b"]
    )
    data = json.loads(_settings_payload(settings, port=8123))
    again = Settings.model_validate(data)
    assert again.api_key is not None and again.api_key.get_secret_value() == "s3cret"
    assert (again.workers, again.port) == (1, 8123)
    assert again.seq_buckets == [16, 64] and again.model == ["a=/m/a", "b=/m/b"]


class _Engines:
    def __init__(self) -> None:
        self.stage = Stage.WARMING

    @property
    def ready(self) -> bool:
        return self.stage is Stage.READY


async def _call(gate: ReadyGate, path: str) -> tuple[int, dict[str, Any] | None]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate({"type": "http", "path": path, "method": "GET"}, receive, send)
    status = int(sent[0]["status"])
    body = sent[1].get("body", b"") if len(sent) > 1 else b""
    return status, json.loads(body) if body else None


@pytest.mark.anyio
async def test_ready_waits_for_every_worker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(bytes(32))
    shared = SharedState(state, workers=2)
    passed: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    engines = _Engines()
    gate = ReadyGate(app, engines=engines, index=0, workers=2, state=state)
    # Not ready itself: the app's own /ready answers (503 with its stage, in the real app).
    assert (await _call(gate, "/ready"))[0] == 200 and passed == ["/ready"]
    engines.stage = Stage.READY
    for _ in range(200):  # the gate publishes its stage within a few milliseconds
        if shared.read()[0][0] == _READY:
            break
        await asyncio.sleep(0.005)
    assert [code for code, _ in shared.read()] == [_READY, 0]
    status, body = await _call(gate, "/ready")
    assert status == 503 and body == {
        "status": "warming",
        "workers": 2,
        "workers_ready": 1,
        "worker": 0,
    }
    assert (await _call(gate, "/health"))[0] == 200  # other routes are never held
    shared.publish(1, _READY)
    shared.beat(1, time.monotonic())
    assert (await _call(gate, "/ready"))[0] == 200
    # A sibling that stops beating (killed, stopped) no longer counts, whatever its stage says.
    shared.beat(1, time.monotonic() - 2)
    assert (await _call(gate, "/ready"))[0] == 503


def test_shared_files_of_dead_supervisors_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead = tmp_path / f"ember-workers-{int(gone.stdout)}-abc"
    alive = tmp_path / f"ember-workers-{os.getpid()}-abc"
    other = tmp_path / "ember-workers-notapid"
    for path in (dead, alive, other):
        path.write_bytes(bytes(16))
    assert remove_orphans(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
