"""Where each request's CPU goes in a running ember server under closed-loop load.

    flock /tmp/ember-cpu.lock .venv/bin/python benchmarks/request_profile.py \
        [--cmd "python -m ember serve --port {port} ..."] [--concurrency 32] [--duration 12] \
        [--py-spy PATH] [--out FILE.json]

It spawns the server, waits for `/ready`, starts `ember bench load` (one ~45-token text a
request, OpenAI route), and over the load's measured window takes:
- every thread's CPU seconds from /proc (user + system), named by py-spy's dump (Python threads)
  or "native" (ONNX Runtime's pool, the tokenizer's pool): exact, but only per thread;
- py-spy samples of the Python threads (`--nonblocking`, idle stacks excluded), each sample
  put in one category by its innermost recognised frame. A thread's CPU is split over the
  categories in proportion to its samples.
Answered requests come from the server's own `ember_requests_total`. The report is CPU
milliseconds per request by thread and by category. py-spy must be installed separately (it is
not an ember dependency): `python -m venv /tmp/tools && /tmp/tools/bin/pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ember.bench.process import free_port, render_cmd, running

# Innermost frame first: the first rule whose pattern is in a frame names the sample's category.
RULES: tuple[tuple[str, str], ...] = (
    ("onnxruntime/", "ORT run (Python side)"),
    ("ember/engine/tokenizer.py", "tokenise"),
    ("ember/engine/postprocess.py", "postprocess (numpy)"),
    ("ember/http/shaping.py", "response body (orjson, shaping)"),
    ("ember/engine/batcher.py", "batcher (queue, pad, futures)"),
    ("prometheus_client/", "metrics"),
    ("pydantic", "pydantic validation"),
    ("fastapi/", "FastAPI (routing, dependencies, body)"),
    ("starlette/", "Starlette (request, response, routing)"),
    ("uvicorn/", "HTTP parsing and send (uvicorn, httptools)"),
    ("ember/http/serving.py", "HTTP parsing and send (uvicorn, httptools)"),
    ("ember/http/middleware.py", "ember middleware"),
    ("ember/http/", "ember routes"),
    ("ember/engine/", "engine (admission, model)"),
    ("concurrent/futures", "thread hops (futures, executor)"),
    ("threading.py", "thread hops (futures, executor)"),
    ("asyncio/", "event loop (asyncio)"),
)


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for pattern, name in RULES:
            if pattern in frame:
                return name
    return "other"


def thread_cpu(pid: int) -> dict[int, float]:
    """tid → CPU seconds (user + system) of every thread of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def python_threads(py_spy: str, pid: int) -> dict[int, str]:
    """tid → Python thread name, from `py-spy dump`."""
    text = subprocess.run(
        [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    return {int(t): name for t, name in re.findall(r'^Thread (\d+) \(\w+\): "([^"]*)"', text, re.M)}


def answered(port: int) -> float:
    """Inference requests answered 200 so far, by the server's own counter."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ember_requests_total{") and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def parse_raw(
    path: Path,
) -> tuple[dict[int, collections.Counter[str]], dict[int, collections.Counter[str]]]:
    """py-spy raw output → (tid → category → samples, tid → innermost frame → samples)."""
    out: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        frames = stack_text.split(";")
        match = re.match(r"thread \((\d+)\)", frames[0])
        if not match:
            continue
        tid = int(match.group(1))
        out[tid][categorise(frames[1:])] += int(count)
        leaves[tid][re.sub(r":\d+\)$", ")", frames[-1])] += int(count)
    return out, leaves


def group_of(tid: int, names: dict[int, str]) -> str:
    name = names.get(tid)
    if name is None:
        return "native threads (ORT pool, tokenizer pool)"
    if name == "MainThread":
        return "event loop thread"
    if name.startswith("infer"):
        return "inference thread"
    if name.startswith("tokenize"):
        return "tokenizer threads"
    return f"other Python threads ({name})"


def event_loop_top(
    leaves: dict[int, collections.Counter[str]], names: dict[int, str], top: int = 25
) -> dict[str, float]:
    """The event loop thread's innermost frames: share of its samples, largest first."""
    for tid, counts in leaves.items():
        if names.get(tid) == "MainThread":
            total = sum(counts.values())
            return {frame: round(n / total, 3) for frame, n in counts.most_common(top)}
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cmd",
        default=f"{sys.executable} -m ember serve --host 127.0.0.1 --port {{port}}",
        help="server command; {port} is replaced",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/tools/bin/py-spy")
    parser.add_argument("--label", default="ember")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep-raw", type=Path, help="copy py-spy's raw stacks here")
    args = parser.parse_args()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="ember-profile-"))
    with running(render_cmd(args.cmd, port), port=port, log_path=work / "server.log") as server:
        pid = server.pid
        names = python_threads(args.py_spy, pid)
        load = subprocess.Popen(
            [sys.executable, "-m", "ember", "bench", "load", "--url", f"http://127.0.0.1:{port}",
             "--api", "openai", "--concurrency", str(args.concurrency), "--duration",
             str(args.duration + 1.0), "--warmup", str(args.warmup), "--words", str(args.words),
             "--no-plot", "--label", args.label, "--out", str(work)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(args.warmup + 0.5)  # connect + warm-up, then the window starts
        cpu0, req0, wall0 = thread_cpu(pid), answered(port), time.perf_counter()
        subprocess.run(
            [args.py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--duration",
             str(int(args.duration)), "--format", "raw", "--threads", "--nonblocking",
             "--output", str(work / "stacks.raw")],
            check=True, capture_output=True,
        )  # fmt: skip
        cpu1, req1, wall1 = thread_cpu(pid), answered(port), time.perf_counter()
        names |= python_threads(args.py_spy, pid)
        load_out, _ = load.communicate(timeout=120)
    if load.returncode != 0:
        print(load_out, file=sys.stderr)
        return 1
    level = json.loads((work / f"load-{args.label}.json").read_text())["levels"][0]
    requests = req1 - req0
    samples, leaves = parse_raw(work / "stacks.raw")
    by_group: dict[str, float] = collections.Counter()
    by_category: dict[str, float] = collections.Counter()
    for tid, seconds in cpu1.items():
        spent = seconds - cpu0.get(tid, 0.0)
        if spent <= 0:
            continue
        group = group_of(tid, names)
        by_group[group] += spent
        counts = samples.get(tid)
        if group.startswith("native"):
            by_category["ORT kernels, pool thread (native)"] += spent
        elif not counts:
            by_category[f"{group}: no samples"] += spent
        else:
            total = sum(counts.values())
            for category, n in counts.items():
                key = "ORT kernels, calling thread" if category.startswith("ORT") else category
                by_category[key] += spent * n / total
    wall = wall1 - wall0

    def per_request(table: dict[str, float]) -> dict[str, float]:
        ordered = sorted(table.items(), key=lambda kv: -kv[1])
        return {k: round(1e3 * v / requests, 3) for k, v in ordered}

    report = {
        "label": args.label,
        "cmd": args.cmd,
        "concurrency": args.concurrency,
        "window_s": round(wall, 2),
        "requests": requests,
        "req_per_s_window": round(requests / wall, 1),
        "load": {k: level[k] for k in ("req_per_s", "latency_ms", "server_cpu_pct", "errors")},
        "server_cpu_ms_per_request": round(1e3 * sum(by_group.values()) / requests, 3),
        "cpu_ms_per_request_by_thread": per_request(by_group),
        "cpu_ms_per_request_by_category": per_request(by_category),
        "event_loop_top_frames": event_loop_top(leaves, names),
        "py_spy_samples": {str(t): dict(c) for t, c in samples.items()},
        "load_avg": os.getloadavg(),
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "py_spy_samples"}, indent=1))
    if args.keep_raw:
        shutil.copy(work / "stacks.raw", args.keep_raw)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
