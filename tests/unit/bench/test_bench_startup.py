"""`ember bench startup` end to end against a fake server (no model): timings and JSON shape."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import orjson
import pytest

from ember.bench.process import (
    drop_page_cache,
    render_cmd,
    spawn_server,
    stop_server,
    tree_rss_mb,
)
from ember.bench.startup import SHAPE_CLASSES, StartupConfig, run_startup

FAKE = Path(__file__).with_name("fake_server.py")
FAKE_CMD = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} --port {{port}}"


def test_render_cmd_replaces_only_the_port() -> None:
    argv = render_cmd("srv --port {port} --json '{\"a\": 1}'", 8080)
    assert argv == ["srv", "--port", "8080", "--json", '{"a": 1}']


def test_startup_result_shape(tmp_path: Path) -> None:
    config = StartupConfig(
        cmd=FAKE_CMD + " --ready-after 0.3", runs=2, label="fake", repeats=3, poll_interval=0.01
    )
    result = run_startup(config, out_dir=tmp_path)
    assert result["failed_runs"] == []
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        assert 0.3 <= run["ready_seconds"] < 60  # generous: a loaded machine is slow to spawn
        assert run["port_seconds"] <= run["health_seconds"] < run["ready_seconds"]
        # Probe time: /health answered and /ready said 503 before ready (ordered, not timed:
        # the fake's own interpreter start varies with the machine's load).
        assert run["not_ready_seconds"] is not None
        assert run["not_ready_seconds"] < run["ready_seconds"]
        assert run["page_cache"] == "warm"
        assert run["rss_mb_at_ready"] > 1
        assert run["exit_code"] == -15
        assert set(run["classes"]) == set(SHAPE_CLASSES)
        for c in run["classes"].values():
            assert c["first_status"] == 200 and c["errors"] == {}
            assert len(c["steady_ms"]) == 3
            assert c["ratio"] == pytest.approx(c["first_ms"] / c["steady_median_ms"], rel=1e-2)
    summary = result["summary"]
    assert summary["ready_seconds_max"] >= summary["ready_seconds_median"] >= 0.3
    assert summary["worst_ratio"] > 0
    orjson.dumps(result)  # serialisable as is


def test_failed_runs_are_kept_apart(tmp_path: Path) -> None:
    config = StartupConfig(cmd=FAKE_CMD + " --exit-after 0.2 --ready-after 60", runs=1)
    result = run_startup(config, out_dir=tmp_path)
    assert result["runs"] == []
    (failure,) = result["failed_runs"]
    assert "exited with code 3" in failure["error"]
    assert result["summary"]["ready_seconds_median"] is None


def test_stop_server_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    with (tmp_path / "log").open("wb") as log:
        proc = spawn_server(render_cmd(FAKE_CMD + " --ignore-term", 0), log=log)
        time.sleep(0.5)  # let it install its SIGTERM handler
        code, seconds = stop_server(proc, timeout=0.5)
    assert code == -9 and seconds >= 0.5
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_cli_writes_json_and_png(tmp_path: Path) -> None:
    from ember.bench.cli import main

    code = main(
        [
            "startup",
            "--cmd",
            FAKE_CMD,
            "--runs",
            "1",
            "--repeats",
            "2",
            "--label",
            "fake",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = orjson.loads((tmp_path / "startup-fake.json").read_bytes())
    assert [run["ready_seconds"] > 0 for run in result["runs"]] == [True]
    assert (tmp_path / "startup-fake.png").stat().st_size > 10_000


def test_cold_runs_drop_the_page_cache_first(tmp_path: Path) -> None:
    weights = tmp_path / "model" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"x" * 8192)
    assert drop_page_cache([tmp_path / "model", tmp_path / "missing"]) == (1, 8192)
    config = StartupConfig(
        cmd=FAKE_CMD, runs=2, cold_runs=1, evict_paths=(str(weights),), shape_classes=False
    )
    result = run_startup(config, out_dir=tmp_path)
    assert [run["page_cache"] for run in result["runs"]] == ["cold", "warm"]
    assert all(run["classes"] == {} for run in result["runs"])
    cold = result["runs"][0]["ready_seconds"]
    assert result["summary"]["ready_seconds_cold_max"] == cold
    assert result["evicted"] == [str(weights)]


def test_tree_rss_of_this_process() -> None:
    rss = tree_rss_mb(os.getpid())
    assert rss is not None and 1 < rss < 100_000
