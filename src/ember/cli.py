"""`ember serve | prepare | check | bench | deploy`: parses arguments into Settings, no logic.

Every Settings field becomes a `--kebab-case` flag whose help is the field's docstring; flags
override `EMBER_*` variables, which override defaults.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from ember import __version__
from ember.settings import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, *, skip: Sequence[str] = ()) -> None:
    """One flag per Settings field; values stay unset unless given, so env vars still apply."""
    for name, field in Settings.model_fields.items():
        if name in skip:
            continue
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            annotation = inner[0] if len(inner) == 1 else annotation
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, SecretStr):
            default = "***"
        help_text = (field.description or "").replace("%", "%%")
        env = f"EMBER_{name.upper()}"
        help_text = f"{help_text} [env {env}; default {default!r}]"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is list:
            parser.add_argument(_flag(name), action="append", metavar="VALUE", **kwargs)
        elif origin is typing.Literal:
            parser.add_argument(_flag(name), choices=[str(a) for a in args], **kwargs)
        else:
            parser.add_argument(_flag(name), metavar=name.upper(), **kwargs)


def settings_from(namespace: argparse.Namespace, *, skip: Sequence[str] = ()) -> Settings:
    given = {
        k: v for k, v in vars(namespace).items() if k in Settings.model_fields and k not in skip
    }
    for key in ("seq_buckets", "row_buckets", "cors_origins"):
        if key in given:
            given[key] = [part for value in given[key] for part in str(value).split(",") if part]
    return Settings(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember",
        description="A text embedding, rerank and classification server that is warm before it "
        "says it is ready.",
    )
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve models over HTTP (TEI- and OpenAI-compatible)")
    add_settings_arguments(serve)

    check = sub.add_parser(
        "check", help="load, warm up and run one request per task; exit 0 when all pass"
    )
    add_settings_arguments(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    prepare = sub.add_parser(
        "prepare",
        help="export and optimise a model to ONNX, once, cached "
        "(with --device cuda: compile the CUDA kernels into the cache)",
    )
    prepare.add_argument(
        "source", nargs="?", default="builtin", help="model folder, cached id or builtin"
    )
    prepare.add_argument("--out", default=None, help="artifact folder (default: the cache)")
    prepare.add_argument(
        "--optimize",
        type=int,
        default=None,
        choices=[0, 1, 2, 99],
        help="ONNX Runtime graph optimisation level for the saved graph",
    )
    prepare.add_argument("--force", action="store_true", help="prepare again even if cached")
    add_settings_arguments(prepare, skip=("model",))

    sub.add_parser("bench", help="startup and load benchmarks (ember bench --help)", add_help=False)
    sub.add_parser(
        "deploy", help="render deployment manifests (ember deploy --help)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from ember.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "deploy":
        from ember.deploy import main as deploy_main

        return deploy_main(argv[1:])
    parser = build_parser()
    namespace = parser.parse_args(argv or ["serve"])
    command = namespace.command or "serve"
    try:
        settings = settings_from(namespace)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"ember: invalid settings: {errors}", file=sys.stderr)
        return 2
    if command == "serve":
        from ember.server import serve

        return serve(settings)
    if command == "check":
        from ember.check import run_check

        return run_check(settings, as_json=namespace.json)
    if command == "prepare" and settings.device == "cuda":
        return _prepare_cuda(settings, namespace.source)
    if command == "prepare":
        from ember.backends.artifact import prepare_main

        return prepare_main(
            settings,
            source=namespace.source,
            out=namespace.out,
            optimize=namespace.optimize,
            force=namespace.force,
        )
    parser.print_help()
    return 2


def _prepare_cuda(settings: Settings, source: str) -> int:
    """`ember prepare --device cuda`: what a GPU start can reuse. The CuPy backend's kernels are
    compiled into the cache (the model itself needs no preparing: its weights load as they are)."""
    from ember.backends.loader import resolve_backend
    from ember.errors import EmberError
    from ember.models import inspect_model

    try:
        spec = inspect_model(source, pooling=settings.pooling, dense_path=settings.dense_path)
        backend = resolve_backend(settings, "cuda", spec)
        if backend != "cupy":
            print(f"ember: {spec.name} is served by {backend} on CUDA: nothing to prepare")
            return 0
        from ember.backends.cupy_backend import prepare_kernels

        print(prepare_kernels(settings.cache_dir))
    except EmberError as exc:
        print(f"ember: error: {exc.message}", file=sys.stderr)
        return 1
    return 0
