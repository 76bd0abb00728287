"""Choose and build a backend for a model from the settings, importing only what it needs."""

from __future__ import annotations

import logging

from ember.backends.base import Backend
from ember.gpus import cuda_likely
from ember.models import ModelSpec
from ember.settings import Settings

log = logging.getLogger("ember.backends")


def resolve_device(settings: Settings) -> str:
    if settings.device != "auto":
        return settings.device
    return "cuda" if cuda_likely("auto") else "cpu"


def resolve_backend(settings: Settings, device: str, spec: ModelSpec) -> str:
    if spec.onnx_artifact:
        return "onnx"
    if settings.backend != "auto":
        return settings.backend
    if device != "cuda":
        return "onnx"
    from ember.backends.cupy_backend import unsupported

    reason = unsupported(spec, settings)
    if reason is None:
        return "cupy"
    log.info("%s: the torch backend serves it on CUDA (%s)", spec.name, reason)
    return "torch"


def create_backend(spec: ModelSpec, settings: Settings) -> Backend:
    device = resolve_device(settings)
    name = resolve_backend(settings, device, spec)
    if name == "onnx":
        from ember.backends.onnx_backend import OnnxBackend

        return OnnxBackend.for_model(spec=spec, settings=settings, device=device)
    if name == "cupy":
        from ember.backends.cupy_backend import CupyBackend

        return CupyBackend(spec=spec, graphs=settings.cuda_graphs, cache_dir=settings.cache_dir)
    from ember.backends.torch_backend import TorchBackend

    return TorchBackend(
        spec=spec,
        device=device,
        dtype=settings.dtype,
        threads=settings.intra_op_threads(),
        cuda_graphs=settings.cuda_graphs,
        native=settings.torch_native,
    )
