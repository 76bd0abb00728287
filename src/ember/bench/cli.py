"""`ember bench startup | load | plot`: parses arguments, runs, prints a table, writes JSON + PNG.

Exit status: 0 when every run/level produced figures, 1 when a server never became ready or a
load level had no successful request, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ember.bench.client import APIS, Api, Endpoint

if TYPE_CHECKING:
    from ember.bench.workloads import Workload


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "server"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        choices=APIS,
        default="tei",
        help="request/response shape: TEI /embed or OpenAI /v1/embeddings",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="the `model` field of OpenAI requests (omitted when not given)",
    )
    parser.add_argument("--label", default=None, help="name of this server in tables, files, plots")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for the JSON, PNG and server logs (default: bench-results)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write JSON only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random request texts")


def build_parser() -> argparse.ArgumentParser:
    from ember.bench.startup import DEFAULT_CMD

    parser = argparse.ArgumentParser(prog="ember bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    startup = sub.add_parser(
        "startup",
        help="spawn a server N times: time to ready, RSS, first request vs steady per shape",
        description="Spawn the server N times; measure spawn → port → /health → ready, the RSS "
        "of its process tree at ready, and the first request of each shape class (1 short text, "
        "1 text over the max length, 32 medium texts, 8 long texts) against the median of later "
        "ones.",
    )
    startup.add_argument(
        "--cmd",
        default=DEFAULT_CMD,
        help=f"server command; {{port}} is replaced by a free port (default: {DEFAULT_CMD!r})",
    )
    startup.add_argument("--runs", type=int, default=3, help="spawns (default 3)")
    startup.add_argument(
        "--ready-path", default="/ready", help="polled until 200 (peers without /ready: /health)"
    )
    startup.add_argument(
        "--health-path",
        default="/health",
        help="liveness path whose first 200 is recorded ('none' to skip)",
    )
    startup.add_argument(
        "--embed-path",
        default=None,
        help="embeddings route (default /embed for tei, /v1/embeddings for openai)",
    )
    startup.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="later requests per class whose median is 'steady' (default 20)",
    )
    startup.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="give up on a run after this many seconds (default 300)",
    )
    startup.add_argument(
        "--stop-timeout",
        type=float,
        default=15.0,
        help="seconds between SIGTERM and SIGKILL (default 15)",
    )
    startup.add_argument(
        "--cold-runs",
        type=int,
        default=0,
        help="start the first N runs with a cold page cache: the files under --evict (default: "
        "the Python libraries, ember's cache and paths named in --cmd) dropped with "
        "posix_fadvise(DONTNEED), as on a new node (default 0)",
    )
    startup.add_argument(
        "--evict",
        action="append",
        default=None,
        metavar="PATH",
        help="a file or folder to drop from the page cache before each cold run (repeatable)",
    )
    startup.add_argument(
        "--poll-interval",
        type=float,
        default=0.02,
        help="seconds between probes while waiting (default 0.02)",
    )
    _add_common(startup)

    load = sub.add_parser(
        "load",
        help="closed-loop load at several concurrencies (loopback only)",
        description="Closed-loop load: each virtual user holds one keep-alive connection and "
        "sends its next request when the previous answer arrives. Loopback targets only.",
    )
    target = load.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="server root, e.g. http://127.0.0.1:8080 (loopback only)")
    target.add_argument(
        "--cmd",
        help="spawn this server command ({port} → a free port), wait "
        "for --ready-path, load it, stop it",
    )
    load.add_argument(
        "--path",
        default=None,
        help="embeddings route (default /embed for tei, /v1/embeddings for openai)",
    )
    load.add_argument(
        "--concurrency",
        default="1,8,32,128",
        help="comma-separated virtual users per level (default 1,8,32,128)",
    )
    load.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per level (default 10)"
    )
    load.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="unmeasured seconds of load before each level (default 1)",
    )
    load.add_argument(
        "--max-requests",
        type=int,
        default=100_000,
        help="cap on measured requests per level (default 100000)",
    )
    load.add_argument(
        "--workload",
        choices=("embed", "rerank", "classify", "mixed"),
        default="embed",
        help="what each request is: embed (--api's route), rerank (TEI /rerank: one query and "
        "--batch texts), classify (TEI /predict of --batch texts), or an equal mix of the three "
        "(default embed)",
    )
    load.add_argument("--batch", type=int, default=1, help="texts per request (default 1)")
    load.add_argument("--words", type=int, default=40, help="words per text (default 40)")
    load.add_argument(
        "--timeout", type=float, default=60.0, help="per-request timeout, seconds (default 60)"
    )
    load.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="server pid for CPU accounting (default: the pid listening on the "
        "port, when it can be seen)",
    )
    load.add_argument("--ready-path", default="/ready", help="with --cmd: polled until 200")
    load.add_argument(
        "--ready-timeout", type=float, default=300.0, help="with --cmd: seconds to wait for ready"
    )
    _add_common(load)

    plot = sub.add_parser("plot", help="plot result JSON files (several: one comparison PNG)")
    plot.add_argument("files", nargs="+", type=Path, help="results of one kind: load or startup")
    plot.add_argument("--out", type=Path, required=True, help="PNG to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ember bench`; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "startup":
        return _startup(args)
    if args.command == "load":
        return _load(args)
    from ember.bench.plot import plot_files

    try:
        plot_files(args.files, args.out)
    except (ValueError, KeyError, OSError) as exc:
        print(f"ember bench plot: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def _startup(args: argparse.Namespace) -> int:
    from ember.bench.load import write_json
    from ember.bench.process import render_cmd
    from ember.bench.startup import (
        DEFAULT_CMD,
        StartupConfig,
        print_startup,
        run_startup,
        serving_files,
    )

    if args.runs < 1 or not 0 <= args.cold_runs <= args.runs:
        print("ember bench startup: need --runs ≥ 1 and 0 ≤ --cold-runs ≤ --runs", file=sys.stderr)
        return 2
    evict = tuple(args.evict or (serving_files(render_cmd(args.cmd, 0)) if args.cold_runs else ()))
    label = _slug(args.label or ("ember" if args.cmd == DEFAULT_CMD else "server"))
    health = None if args.health_path.lower() == "none" else args.health_path
    config = StartupConfig(
        cmd=args.cmd,
        runs=args.runs,
        api=cast(Api, args.api),
        ready_path=args.ready_path,
        health_path=health,
        embed_path=args.embed_path,
        model=args.model,
        label=label,
        repeats=args.repeats,
        ready_timeout=args.ready_timeout,
        stop_timeout=args.stop_timeout,
        poll_interval=args.poll_interval,
        seed=args.seed,
        cold_runs=args.cold_runs,
        evict_paths=evict,
    )
    result = run_startup(config, out_dir=args.out)
    json_path = args.out / f"startup-{label}.json"
    write_json(result, json_path)
    print_startup(result)
    if not args.no_plot and result["runs"]:
        from ember.bench.plot import plot_startup

        plot_startup(result, json_path.with_suffix(".png"))
    print(f"wrote {json_path}" + ("" if args.no_plot else f" and {json_path.with_suffix('.png')}"))
    return 1 if result["failed_runs"] else 0


def _load(args: argparse.Namespace) -> int:
    from ember.bench.client import parse_url
    from ember.bench.load import parse_concurrency, print_load

    try:
        levels = parse_concurrency(args.concurrency)
        endpoint = parse_url(args.url) if args.url else None
    except ValueError as exc:
        print(f"ember bench load: {exc}", file=sys.stderr)
        return 2
    if args.batch < 1 or args.duration <= 0 or args.max_requests < 1:
        print(
            "ember bench load: --batch, --duration and --max-requests must be positive",
            file=sys.stderr,
        )
        return 2
    label = _slug(args.label or "server")
    base: dict[str, Any] = {
        "workload": _workload(args),
        "api": cast(Api, args.api),
        "path": args.path,
        "model": args.model,
        "concurrency": tuple(levels),
        "duration": args.duration,
        "warmup": args.warmup,
        "max_requests": args.max_requests,
        "batch": args.batch,
        "words": args.words,
        "timeout": args.timeout,
        "label": label,
        "seed": args.seed,
    }
    suffix = "" if args.batch == 1 or f"b{args.batch}" in label else f"-b{args.batch}"
    json_path = args.out / f"load-{label}{suffix}.json"
    result = (
        _load_running(endpoint, args.server_pid, base)
        if endpoint is not None
        else _load_spawned(args, base, log_path=json_path.with_suffix(".server.log"))
    )
    if result is None:
        return 1
    from ember.bench.load import write_json

    write_json(result, json_path)
    print_load(result)
    if not args.no_plot:
        from ember.bench.plot import plot_load

        plot_load([result], json_path.with_suffix(".png"))
    print(f"wrote {json_path}" + ("" if args.no_plot else f" and {json_path.with_suffix('.png')}"))
    return 1 if any(level["ok"] == 0 for level in result["levels"]) else 0


def _workload(args: argparse.Namespace) -> Workload | None:
    """--workload as a workload; None for embed (LoadConfig builds it from --api/--path)."""
    from ember.bench.workloads import Classify, Embed, Mixed, Rerank

    rerank = Rerank(docs=args.batch, words=args.words)
    classify = Classify(texts=args.batch, words=args.words)
    if args.workload == "rerank":
        return rerank
    if args.workload == "classify":
        return classify
    if args.workload == "mixed":
        embed = Embed(api=args.api, batch=args.batch, words=args.words, model=args.model)
        return Mixed([(1.0, embed), (1.0, rerank), (1.0, classify)])
    return None


def _load_running(
    endpoint: Endpoint, server_pid: int | None, base: dict[str, Any]
) -> dict[str, Any]:
    from ember.bench.load import LoadConfig, find_listener_pid, run_load

    pid = server_pid if server_pid is not None else find_listener_pid(endpoint.port)
    config = LoadConfig(endpoint=endpoint, server_pid=pid, **base)
    return run_load(config, on_level=_progress)


def _load_spawned(
    args: argparse.Namespace, base: dict[str, Any], *, log_path: Path
) -> dict[str, Any] | None:
    """Spawn `--cmd`, wait for ready, load it, stop it; None (reported) if it never got ready."""
    from ember.bench.load import LoadConfig, run_load
    from ember.bench.process import ServerFailed, free_port, render_cmd, running

    port = free_port()
    try:
        with running(
            render_cmd(args.cmd, port),
            port=port,
            log_path=log_path,
            ready_path=args.ready_path,
            health_path=None,
            ready_timeout=args.ready_timeout,
        ) as server:
            print(
                f"server ready after {server.probes.ready_seconds:.2f} s "
                f"(pid {server.pid}, port {port})"
            )
            config = LoadConfig(endpoint=server.endpoint, server_pid=server.pid, **base)
            result = run_load(config, on_level=_progress)
            result["cmd"] = args.cmd
            result["server_log"] = str(log_path)
    except ServerFailed as exc:
        print(f"ember bench load: {exc}; log: {log_path}", file=sys.stderr)
        return None
    return result


def _progress(level: dict[str, Any]) -> None:
    lat = level["latency_ms"]
    print(
        f"c={level['concurrency']}: {level['req_per_s']:.1f} req/s, "
        f"{level['emb_per_s']:.1f} emb/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
        f"errors {level['errors'] or 0}",
        flush=True,
    )
