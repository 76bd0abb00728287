"""`ember deploy k8s`: arguments → startup (a report, or measured here) → plan → patch + overlay.

Exit status: 0 when written, 1 when the local measurement failed, 2 for bad inputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ember.deploy.plan import Options, plan
from ember.deploy.report import DeployError, MeasureError, Startup, load_report, measure
from ember.settings import Settings


def default_base() -> Path:
    """deploy/k8s/base under the current folder, else beside this source tree (a checkout)."""
    here = Path("deploy/k8s/base")
    if (here / "kustomization.yaml").is_file():
        return here
    return Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember deploy",
        description="Render deployment files sized from a measured startup.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = sub.add_parser(
        "k8s",
        help="a kustomize patch (probe windows, memory, CPU, grace period) and an overlay",
        description="Size the Kubernetes probes, memory and grace period from a startup report, "
        "or from `ember serve` started here RUNS times (arguments after `--` go to `ember "
        "serve`), and write them as a kustomize patch plus an overlay applying it to the base "
        "(deploy/k8s/base). Without --out, print the rendered manifests.",
    )
    defaults = Options()
    shutdown_default = Settings.model_fields["shutdown_timeout"].default
    add = k8s.add_argument
    add(
        "--startup-report",
        type=Path,
        metavar="FILE",
        help="JSON from `ember bench startup`; without it, measure here",
    )
    add(
        "--runs",
        type=int,
        default=3,
        help="local measurement: times to start `ember serve` (default 3)",
    )
    add(
        "--cold-runs",
        type=int,
        default=1,
        help="local measurement: how many of the runs start with the model, artifacts and "
        "Python libraries dropped from the page cache, as on a new node (default 1)",
    )
    add(
        "--measure-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="local measurement: give up on a run after this long (default 600)",
    )
    add(
        "--margin",
        type=float,
        default=defaults.margin,
        help="safety factor on the slowest measured ready time and memory (default 2.0)",
    )
    add(
        "--replicas",
        type=int,
        default=defaults.replicas,
        help="minimum replicas (the autoscaler's floor; default 2)",
    )
    add(
        "--max-replicas",
        type=int,
        default=None,
        help="the autoscaler's ceiling (default 4 × --replicas)",
    )
    add("--image", default=defaults.image, help="container image (default ember:latest)")
    add("--namespace", default=None, help="namespace for every object")
    add(
        "--cpu",
        type=float,
        default=defaults.cpu,
        help="CPU cores requested and allowed; sets EMBER_THREADS (default 2)",
    )
    add("--gpus", type=int, default=0, help="nvidia.com/gpu per pod (default 0)")
    add(
        "--shutdown-timeout",
        type=float,
        default=shutdown_default,
        help=f"EMBER_SHUTDOWN_TIMEOUT in the pod (default {shutdown_default:g})",
    )
    add(
        "--prestop-sleep",
        type=int,
        default=defaults.prestop_sleep,
        help="seconds to keep serving after deletion, before SIGTERM (default 5)",
    )
    add(
        "--base",
        type=Path,
        default=None,
        metavar="DIR",
        help="the kustomize base the overlay applies to (default deploy/k8s/base)",
    )
    add("--out", type=Path, metavar="DIR",
        help="write the overlay (kustomization.yaml + ember-measured.yaml) here; default: "
        "print the rendered manifests")  # fmt: skip
    return parser


def _options(args: argparse.Namespace) -> Options:
    if args.cpu <= 0 or args.gpus < 0 or args.runs < 1 or args.prestop_sleep < 0:
        raise DeployError("--cpu and --runs must be positive; --gpus and --prestop-sleep ≥ 0")
    if not 0 <= args.cold_runs <= args.runs:
        raise DeployError("need 0 ≤ --cold-runs ≤ --runs")
    max_replicas = args.max_replicas or 4 * args.replicas
    if args.replicas < 1 or max_replicas < args.replicas:
        raise DeployError("need 1 ≤ --replicas ≤ --max-replicas")
    return Options(
        image=args.image,
        namespace=args.namespace,
        replicas=args.replicas,
        max_replicas=max_replicas,
        margin=args.margin,
        cpu=args.cpu,
        gpus=args.gpus,
        shutdown_timeout=args.shutdown_timeout,
        prestop_sleep=args.prestop_sleep,
    )


def render(startup: Startup, options: Options, *, base: Path) -> str:
    """The final manifests (base + patch, kustomize's rules) as YAML, the derivation on top."""
    from ember.deploy.kustomize import build
    from ember.deploy.patch import GENERATED, to_yaml, write_overlay

    plan_ = plan(startup, options)
    with tempfile.TemporaryDirectory(prefix="ember-deploy-") as tmp:
        write_overlay(Path(tmp), base=base, startup=startup, options=options, plan=plan_)
        documents = build(Path(tmp))
    return to_yaml(documents, comments=(GENERATED, *plan_.formulas))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ember deploy`; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    serve_args: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, serve_args = args_list[:cut], args_list[cut + 1 :]
    args = build_parser().parse_args(args_list)
    base = args.base or default_base()
    try:
        options = _options(args)
        plan(Startup(ready_seconds=1, health_seconds=1, rss_mb=1, runs=1, source=""), options)
        if args.startup_report is not None:
            if serve_args:
                raise DeployError("arguments after `--` are for a local measurement only")
            startup = load_report(args.startup_report)
        else:
            startup = measure(
                args.runs, serve_args, timeout=args.measure_timeout, cold_runs=args.cold_runs
            )
        if args.out is None:
            sys.stdout.write(render(startup, options, base=base))
            return 0
        from ember.deploy.patch import write_overlay

        plan_ = plan(startup, options)
        paths = write_overlay(args.out, base=base, startup=startup, options=options, plan=plan_)
    except DeployError as exc:
        print(f"ember deploy: {exc}", file=sys.stderr)
        return 2
    except MeasureError as exc:
        print(f"ember deploy: startup measurement failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"ember deploy: wrote {', '.join(p.name for p in paths)} to {args.out} "
        f"(apply: kubectl apply -k {args.out})",
        file=sys.stderr,
    )
    for line in plan_.formulas:
        print(f"  {line}", file=sys.stderr)
    return 0
