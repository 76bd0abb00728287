"""Choose and build a backend for a model from the settings, importing only what it needs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ember.backends.base import Backend
from ember.models import ModelSpec
from ember.settings import Settings

log = logging.getLogger("ember.backends")


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded, without importing torch (cheap on CPU hosts)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def resolve_device(settings: Settings) -> str:
    if settings.device != "auto":
        return settings.device
    if cuda_present() and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "":
        import importlib.util

        if any(importlib.util.find_spec(m) is not None for m in ("cupy", "torch")):
            return "cuda"
    return "cpu"


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
