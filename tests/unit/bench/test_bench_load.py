"""Pure parts of `ember bench load`, and one short run against a fake server."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ember.bench.client import Endpoint
from ember.bench.load import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    LoadConfig,
    backoff_seconds,
    latency_summary,
    parse_concurrency,
    percentile,
    run_load,
    tree_cpu_delta,
)
from ember.bench.process import free_port, stop_server
from ember.bench.workloads import Classify, Embed, Mixed, Rerank, check

FAKE = Path(__file__).with_name("fake_server.py")


def test_percentile_interpolates_like_numpy() -> None:
    import numpy as np

    values = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0])
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = latency_summary([float(i) for i in range(1, 101)])
    assert summary == {"p50": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5, "max": 100.0}
    assert latency_summary([]) == dict.fromkeys(("p50", "p90", "p99", "mean", "max"))


def test_parse_concurrency() -> None:
    assert parse_concurrency("1,8, 32,128") == [1, 8, 32, 128]
    for bad in ("", "0", "1,-2", "a"):
        with pytest.raises(ValueError):
            parse_concurrency(bad)


def test_tree_cpu_delta_counts_new_processes_from_zero() -> None:
    assert tree_cpu_delta({1: 1.0, 2: 5.0}, {1: 1.5, 2: 6.0, 3: 0.25}) == pytest.approx(1.75)


def _start_fake(*extra: str) -> tuple[int, subprocess.Popen[bytes]]:
    import asyncio

    from ember.bench.process import wait_ready

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(port), *extra], start_new_session=True
    )
    asyncio.run(
        wait_ready(
            Endpoint("127.0.0.1", port),
            proc,
            t0=0.0,
            ready_path="/ready",
            health_path=None,
            ready_timeout=1e9,
        )
    )
    return port, proc


@pytest.fixture
def fake_server() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port, proc = _start_fake()
    yield port, proc
    stop_server(proc, timeout=5)


@pytest.fixture
def overloaded_server() -> Iterator[int]:
    port, proc = _start_fake("--overloaded")
    yield port
    stop_server(proc, timeout=5)


@pytest.mark.parametrize("api", ["tei", "openai"])
def test_run_load_against_fake_server(
    fake_server: tuple[int, subprocess.Popen[bytes]], api: str
) -> None:
    port, proc = fake_server
    config = LoadConfig(
        endpoint=Endpoint("127.0.0.1", port),
        api=api,  # type: ignore[arg-type]
        concurrency=(1, 4),
        duration=0.3,
        warmup=0.05,
        batch=3,
        server_pid=proc.pid,
        label="fake",
    )
    result = run_load(config)
    assert result["kind"] == "load"
    assert result["path"] == ("/embed" if api == "tei" else "/v1/embeddings")
    assert [level["concurrency"] for level in result["levels"]] == [1, 4]
    for level in result["levels"]:
        assert level["ok"] > 0 and level["errors"] == {}
        assert level["emb_per_s"] == pytest.approx(3 * level["req_per_s"], rel=0.01)
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
        assert level["server_cpu_pct"] is not None and level["client_cpu_us_per_req"] > 0
        assert level["reconnects"] == 0


def test_run_load_is_bounded_by_count_and_counts_errors(
    fake_server: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = fake_server
    config = LoadConfig(
        endpoint=Endpoint("127.0.0.1", port),
        path="/nowhere",
        concurrency=(4,),
        duration=30,
        warmup=0,
        max_requests=10,
    )
    (level,) = run_load(config)["levels"]
    assert level["requests"] == 10 and level["ok"] == 0
    assert level["errors"] == {"404": 10}
    assert level["latency_ms"]["p50"] is None


def test_cli_refuses_non_loopback_targets(capsys: pytest.CaptureFixture[str]) -> None:
    from ember.bench.cli import main

    assert main(["load", "--url", "http://192.168.0.10:8080", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err


def _load_doc(label: str, batch: int) -> dict[str, object]:
    levels = [
        {"concurrency": c, "emb_per_s": 10.0 * c, "latency_ms": {"p50": 1.0 * c, "p99": 2.0 * c}}
        for c in (1, 8, 32)
    ]
    return {"kind": "load", "label": label, "batch": batch, "levels": levels}


def test_plot_files_combines_load_results(tmp_path: Path) -> None:
    import orjson

    from ember.bench.plot import load_label, plot_files

    paths = []
    for label, batch in (("ember", 1), ("seed", 1), ("ember", 32)):
        path = tmp_path / f"{label}-{batch}.json"
        path.write_bytes(orjson.dumps(_load_doc(label, batch)))
        paths.append(path)
    plot_files(paths, tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    assert load_label(_load_doc("ember", 32)) == "ember (batch 32)"
    assert load_label(_load_doc("ember-b32", 32)) == "ember-b32"
    startup = tmp_path / "startup.json"
    startup.write_bytes(orjson.dumps({"kind": "startup", "label": "x", "runs": []}))
    with pytest.raises(ValueError, match="together"):
        plot_files([paths[0], startup], tmp_path / "mixed.png")


def test_backoff_doubles_up_to_retry_after() -> None:
    assert backoff_seconds(1, None) == BACKOFF_FIRST_S
    assert backoff_seconds(2, None) == 2 * BACKOFF_FIRST_S
    assert backoff_seconds(20, None) == BACKOFF_MAX_S
    assert backoff_seconds(20, "0.3") == 0.3
    assert backoff_seconds(1, "0") == 0
    assert backoff_seconds(20, "Wed, 21 Oct 2026 07:28:00 GMT") == BACKOFF_MAX_S


def test_a_429_makes_the_user_back_off_not_retry_in_a_hot_loop(overloaded_server: int) -> None:
    # Without back-off two users on loopback send thousands of requests in 0.5 s; with it each
    # sleeps 0.05 + 0.1 + 0.2 s after its first three 429s, so at most 4 requests each.
    config = LoadConfig(
        endpoint=Endpoint("127.0.0.1", overloaded_server),
        concurrency=(2,),
        duration=0.5,
        warmup=0,
    )
    (level,) = run_load(config)["levels"]
    assert level["errors"] == {"429": level["requests"]}
    assert 2 <= level["requests"] <= 10
    assert level["reconnects"] == 0


def test_workloads_build_and_check_their_requests() -> None:
    rng = random.Random(0)
    rerank = Rerank(docs=3, words=5, query_words=2).request(rng)
    assert rerank.path == "/rerank" and rerank.expect == 3
    assert len(orjson.loads(rerank.body)["texts"]) == 3
    answer = orjson.dumps([{"index": i, "score": 0.1} for i in range(3)])
    assert check(rerank, answer) and not check(rerank, answer[:-1]) and not check(rerank, b"[]")
    cohere = Rerank(shape="cohere", docs=2, path="/v1/rerank").request(rng)
    assert set(orjson.loads(cohere.body)) == {"query", "documents"}
    results = {"results": [{"index": i, "relevance_score": 0.2} for i in range(2)]}
    assert check(cohere, orjson.dumps(results))
    classify = Classify(texts=3).request(rng)
    row = [{"label": "a", "score": 1.0}]
    assert check(classify, orjson.dumps([row] * 3)) and not check(classify, orjson.dumps([row]))
    embed = Embed(api="openai", batch=2).request(rng)
    assert embed.path == "/v1/embeddings" and embed.expect == 2
    mixed = Mixed([(3.0, Embed()), (1.0, Classify())])
    kinds = {mixed.request(rng).kind for _ in range(50)}
    assert kinds == {"embed", "classify"}
    assert [p["kind"] for p in mixed.describe()["parts"]] == ["embed", "classify"]
    with pytest.raises(ValueError):
        Mixed([(0.0, Embed())])


def test_a_mixed_workload_runs_through_the_same_loop(
    fake_server: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = fake_server
    workload = Mixed([(1.0, Embed(batch=2)), (1.0, Rerank(docs=4)), (1.0, Classify(texts=3))])
    config = LoadConfig(
        endpoint=Endpoint("127.0.0.1", port),
        concurrency=(2,),
        duration=0.3,
        warmup=0.05,
        server_pid=proc.pid,
        workload=workload,
    )
    result = run_load(config)
    (level,) = result["levels"]
    assert level["ok"] > 0 and level["errors"] == {}
    assert level["emb_per_s"] > 2 * level["req_per_s"]  # 2, 4 or 3 items a request
    assert result["workload"]["kind"] == "mixed"
    orjson.dumps(result)  # serialisable as is


def test_soak_script_runs_its_mix_through_the_loop(
    fake_server: tuple[int, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, proc = fake_server
    out = tmp_path / "soak.json"
    script = Path(__file__).parents[3] / "benchmarks" / "soak.py"
    done = subprocess.run(
        [sys.executable, str(script), "--url", f"http://127.0.0.1:{port}", "--minutes", "0.02",
         "--interval", "0.6", "--concurrency", "2", "--server-pid", str(proc.pid),
         "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    doc = orjson.loads(out.read_bytes())
    assert doc["errors"] == {} and doc["ok"] > 0, done.stdout + done.stderr
    assert set(doc["config"]["mix"]) == {
        "embed-1", "embed-batch", "openai-base64", "rerank", "predict"
    }  # fmt: skip
    assert len(doc["intervals"]) == 2 and doc["rss_mb"]["start"] > 1


@pytest.mark.parametrize("workload", ["rerank", "classify", "mixed"])
def test_cli_load_runs_any_workload(tmp_path: Path, workload: str) -> None:
    from ember.bench.cli import main

    cmd = f"{sys.executable} {FAKE} --port {{port}}"
    args = ["load", "--cmd", cmd, "--workload", workload, "--batch", "3", "--concurrency", "2"]
    args += ["--duration", "0.2", "--warmup", "0", "--no-plot", "--out", str(tmp_path)]
    assert main(args) == 0
    (path,) = tmp_path.glob("load-*.json")
    doc = orjson.loads(path.read_bytes())
    assert doc["workload"]["kind"] == workload
    (level,) = doc["levels"]
    assert level["ok"] > 0 and level["errors"] == {}
