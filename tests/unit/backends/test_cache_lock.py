"""The cache lock against a real second process: waiting is logged with the holder's pid, a lock
whose holder is gone is broken, and the wait is bounded."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.backends.artifact import cache_path, ensure_artifact, options_from
from ember.backends.cache_lock import cache_lock, read_holder
from ember.errors import ModelError
from ember.models import inspect_model
from ember.settings import Settings

HOLD = """
import os, sys, time
from pathlib import Path
from ember.backends.cache_lock import cache_lock

with cache_lock(Path(sys.argv[1]), what="holder", timeout=5):
    if sys.argv[2] == "orphan":
        # A forked helper inherits the descriptor and outlives the preparer: the flock stays
        # held by a process that never recorded itself.
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        print(child, flush=True)
        os._exit(0)
    print(os.getpid(), flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[str]]]]:
    """A lock path and a list of holder processes, stopped at the end whatever happens."""
    procs: list[subprocess.Popen[str]] = []
    yield tmp_path / ".artifact.lock", procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def hold(lock: Path, procs: list[subprocess.Popen[str]], mode: str) -> int:
    """Start a process that takes `lock` (for `mode` seconds, or `orphan`); returns the pid that
    holds it once it does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), mode], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def test_waiting_is_logged_at_once_with_the_pid_and_ends_in_a_clear_error(
    holder: tuple[Path, list[subprocess.Popen[str]]], caplog: pytest.LogCaptureFixture
) -> None:
    lock, procs = holder
    pid = hold(lock, procs, "30")
    assert read_holder(lock) is not None
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, "ember.backends.artifact"),
        pytest.raises(ModelError, match=rf"gave up .* \(held by pid {pid} for .*lock-timeout"),
        cache_lock(lock, what="m", timeout=0.5, report_every=0.2),
    ):
        pytest.fail("the lock is held by another process")
    assert time.monotonic() - started < 2
    waits = [r.getMessage() for r in caplog.records if "waiting for another prepare" in r.message]
    assert len(waits) >= 2  # at once, then refreshed
    assert all(f"held by pid {pid}" in line and "giving up after" in line for line in waits)


def test_the_lock_is_taken_when_its_holder_exits(
    holder: tuple[Path, list[subprocess.Popen[str]]],
) -> None:
    lock, procs = holder
    hold(lock, procs, "0.3")
    with cache_lock(lock, what="m", timeout=10):
        recorded = read_holder(lock)
        assert recorded is not None
        assert recorded.pid == os.getpid()
    assert read_holder(lock) is None  # released: no stale holder for the next waiter


def test_a_lock_whose_holder_is_gone_is_broken(
    holder: tuple[Path, list[subprocess.Popen[str]]], caplog: pytest.LogCaptureFixture
) -> None:
    lock, procs = holder
    orphan = hold(lock, procs, "orphan")
    procs[0].wait(timeout=5)  # the preparer is gone; its forked helper still holds the flock
    try:
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, "ember.backends.artifact"),
            cache_lock(lock, what="m", timeout=5),
        ):
            assert read_holder(lock) is not None
        assert time.monotonic() - started < 2
        assert any("breaking the prepare lock" in r.message for r in caplog.records)
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_serving_a_model_another_process_is_preparing_fails_after_the_bound(
    holder: tuple[Path, list[subprocess.Popen[str]]], tiny_plain: Path, tmp_path: Path
) -> None:
    """The path `ember serve` takes on a cache miss: the bound ends the load with an error that
    names the holder (the lifecycle turns it into the `failed` stage)."""
    _, procs = holder
    settings = Settings(cache_dir=tmp_path / "cache", threads=1, prepare_lock_timeout=0.3)
    spec = inspect_model(str(tiny_plain))
    dest = cache_path(settings, spec, options_from(settings))
    pid = hold(dest.parent / f".{dest.name}.lock", procs, "30")
    with pytest.raises(ModelError, match=rf"pid {pid}"):
        ensure_artifact(spec, settings)
    assert not dest.exists()
