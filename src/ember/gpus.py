"""The GPUs this process may use and how many serving workers go on each (stdlib only: the
early listener and the supervisor read it before anything heavy is imported).

Why workers by default on CUDA: one ember process is bound by Python (HTTP, validation,
tokenising, JSON), not by the GPU; on the H200, c=32 single texts: one process 1,510 req/s with
the GPU busy ~14 %, four 5,167 (docs/gpu.md). So `--workers auto` (the default) runs, on a CUDA
host, up to 4 workers per GPU, one per 4 host cores of that GPU's share, fewer where the GPU's
memory would not hold them; each worker sees only its GPU (`CUDA_VISIBLE_DEVICES`). On a CPU
host `auto` is one process, as before.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.settings import Settings

MAX_PER_GPU = 4
CORES_PER_WORKER = 4
"""A worker's event loop, its batch thread and its tokeniser use about one core each at full
load; four cores a worker leaves the rest of the host room."""
WORKER_OVERHEAD_BYTES = 2 * 2**30
"""GPU memory of one worker besides its weights: the CUDA context (~0.5 GiB) and the workspace
and graph pool (0.9 GiB for all-MiniLM-L6-v2, 1.3 GiB for a BERT-base-sized model, measured on
the H200)."""
MEMORY_SHARE = 0.8
"""Of a GPU's memory, what the workers on it may plan for (the rest: other tenants, headroom)."""


@dataclass(frozen=True, slots=True)
class Gpu:
    visible: str
    """Its entry for CUDA_VISIBLE_DEVICES (an index or a UUID, as the environment named it)."""
    name: str = ""
    memory_bytes: int | None = None


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded, without importing a CUDA library (cheap on CPU)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def cuda_likely(device: str) -> bool:
    """Whether `--device DEVICE` will run on CUDA: `cuda`, or `auto` with a driver, a visible
    device and CuPy or torch installed (the rule of `backends.loader.resolve_device`)."""
    if device != "auto":
        return device.startswith("cuda")
    if not cuda_present() or os.environ.get("CUDA_VISIBLE_DEVICES", "x") == "":
        return False
    return any(importlib.util.find_spec(m) is not None for m in ("cupy", "torch"))


def _nvml() -> list[Gpu] | None:
    """Every GPU of the host through NVML (the driver's libnvidia-ml), or None without it."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if lib.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint()
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        gpus = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                return None
            name = ctypes.create_string_buffer(96)
            lib.nvmlDeviceGetName(handle, name, 96)
            memory = (ctypes.c_ulonglong * 3)()  # nvmlMemory_t: total, free, used
            ok = lib.nvmlDeviceGetMemoryInfo(handle, memory) == 0
            gpus.append(Gpu(str(i), name.value.decode(errors="replace"), memory[0] if ok else None))
        return gpus
    finally:
        lib.nvmlShutdown()


def visible_gpus(environ: dict[str, str] | None = None, host: list[Gpu] | None = None) -> list[Gpu]:
    """The GPUs CUDA will show this process, in its order: the host's (from NVML; `host`
    replaces them in tests, [] standing for no NVML) filtered by CUDA_VISIBLE_DEVICES. Without
    NVML, one unnamed GPU per visible entry (or per /proc/driver/nvidia/gpus folder)."""
    env = os.environ if environ is None else environ
    every = _nvml() if host is None else host or None
    entries = env.get("CUDA_VISIBLE_DEVICES")
    if entries is None:
        if every is not None:
            return every
        folder = Path("/proc/driver/nvidia/gpus")
        count = len(list(folder.iterdir())) if folder.is_dir() else int(cuda_present())
        return [Gpu(str(i)) for i in range(count)]
    gpus = []
    for entry in (e.strip() for e in entries.split(",")):
        if not entry or entry.startswith("-"):
            break  # CUDA stops at the first invalid entry
        known = every[int(entry)] if every and entry.isdigit() and int(entry) < len(every) else None
        gpus.append(Gpu(entry, known.name, known.memory_bytes) if known else Gpu(entry))
    return gpus


def weights_bytes(models: list[str]) -> int:
    """Bytes of the weight files of the models given as local folders (0 for the others: the
    built-in model and ids are small or unknown before they are resolved)."""
    total = 0
    for item in models:
        folder = Path(item.split("=", 1)[-1]).expanduser()
        if folder.is_dir():
            total += sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return total


def plan(
    *, workers: int | str, cuda: bool, cores: int, gpus: list[Gpu], weights: int = 0
) -> list[str | None]:
    """One entry per worker: the CUDA_VISIBLE_DEVICES value it gets (None: inherit).

    `workers` is a count or "auto". On CUDA, workers go round-robin over the GPUs, so worker i
    serves GPU i mod n and every GPU gets its share; with one GPU nothing is narrowed. "auto"
    is 1 on CPU; on CUDA, per GPU: one worker per CORES_PER_WORKER cores of its share of the
    host, at most MAX_PER_GPU, and no more than its memory holds (weights + overhead each),
    at least 1."""
    devices = gpus if cuda and gpus else []
    if workers == "auto":
        if not devices:
            return [None]
        per_gpu = max(1, min(MAX_PER_GPU, cores // (CORES_PER_WORKER * len(devices))))
        known = [g.memory_bytes for g in devices if g.memory_bytes]
        if known:
            fits = int(min(known) * MEMORY_SHARE // (weights + WORKER_OVERHEAD_BYTES))
            per_gpu = max(1, min(per_gpu, fits))
        count = per_gpu * len(devices)
    else:
        count = int(workers)
    if len(devices) < 2:
        return [None] * count
    return [devices[i % len(devices)].visible for i in range(count)]


def worker_plan(settings: Settings) -> list[str | None]:
    """One entry per worker process to start: the CUDA_VISIBLE_DEVICES it gets (None: this
    process's). One entry: serve in this process. NVML is asked only on a CUDA host."""
    if settings.workers == 1:
        return [None]
    cuda = cuda_likely(settings.device)
    if settings.workers == "auto" and not cuda:
        return [None]
    return plan(
        workers=settings.workers,
        cuda=cuda,
        cores=settings.available_cores(),
        gpus=visible_gpus() if cuda else [],
        weights=weights_bytes(settings.model),
    )


_role: dict[str, Any] = {"workers": 1, "worker": 0, "devices": [None]}


def set_role(*, worker: int, devices: list[str | None]) -> None:
    """This process is worker `worker` of len(devices), each on its CUDA_VISIBLE_DEVICES."""
    _role.update(workers=len(devices), worker=worker, devices=list(devices))


def role() -> dict[str, Any]:
    """For /info: how many workers serve the port, which one answered, and each worker's
    CUDA_VISIBLE_DEVICES (null: the server's own, every worker on the same GPUs)."""
    return dict(_role)


def encode_plan(devices: list[str | None]) -> str:
    return ",".join("-" if d is None else d for d in devices)


def decode_plan(text: str) -> list[str | None]:
    return [None if d == "-" else d for d in text.split(",")]
