"""`ember.gpus` and the worker plan: how many workers, and which GPU each sees, for any number of
GPUs, with the host's GPUs faked (CI has none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import gpus
from ember.gpus import Gpu, plan, worker_plan
from ember.settings import Settings

GIB = 2**30
H200 = 141 * GIB


def _host(n: int, memory: int | None = H200) -> list[Gpu]:
    return [Gpu(str(i), "NVIDIA H200", memory) for i in range(n)]


def test_auto_is_one_process_on_cpu_whatever_the_cores() -> None:
    assert plan(workers="auto", cuda=False, cores=64, gpus=_host(8)) == [None]
    assert plan(workers=3, cuda=False, cores=2, gpus=[]) == [None] * 3


@pytest.mark.parametrize(
    "cores, count, expected",
    [
        (16, 1, [None] * 4),  # the lent H200 host: 4 workers, all on its one GPU
        (8, 1, [None] * 2),  # one worker per 4 cores
        (2, 1, [None]),  # at least one
        (64, 1, [None] * 4),  # at most 4 a GPU
        (128, 8, [str(i % 8) for i in range(32)]),  # 8 GPUs: 4 each, round-robin
        (16, 2, ["0", "1", "0", "1"]),  # 8 cores a GPU: 2 each
        (4, 2, ["0", "1"]),  # fewer cores than GPUs x 4: still one a GPU
    ],
)
def test_auto_sizes_workers_from_cores_per_gpu(
    cores: int, count: int, expected: list[str | None]
) -> None:
    assert plan(workers="auto", cuda=True, cores=cores, gpus=_host(count)) == expected


def test_auto_holds_no_more_workers_than_gpu_memory_does() -> None:
    # 24 GiB at 80 %: 19.2 GiB for workers of 7 GiB (5 GiB of weights + 2 of overhead) each.
    small = [Gpu("0", "L4", 24 * GIB)]
    assert plan(workers="auto", cuda=True, cores=32, gpus=small, weights=5 * GIB) == [None] * 2
    # A model that alone fills the GPU still gets one worker (the OOM fallback protects it).
    assert plan(workers="auto", cuda=True, cores=32, gpus=small, weights=40 * GIB) == [None]
    # Unknown memory (no NVML): cores decide.
    unknown = [Gpu("0")]
    assert plan(workers="auto", cuda=True, cores=32, gpus=unknown, weights=40 * GIB) == [None] * 4


def test_an_explicit_count_is_spread_over_the_gpus() -> None:
    assert plan(workers=3, cuda=True, cores=2, gpus=_host(2)) == ["0", "1", "0"]
    assert plan(workers=2, cuda=True, cores=2, gpus=_host(1)) == [None, None]


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    host = _host(4)
    assert [g.visible for g in gpus.visible_gpus({}, host)] == ["0", "1", "2", "3"]
    seen = gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}, host)
    assert [(g.visible, g.memory_bytes) for g in seen] == [("2", H200), ("0", H200)]
    # CUDA stops at the first invalid entry; an empty list hides every GPU.
    assert [g.visible for g in gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, host)] == ["1"]
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, host) == []
    # UUIDs pass through as they are; without NVML nothing is known of them but their count.
    uuids = gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, [])
    assert uuids == [Gpu("GPU-a"), Gpu("GPU-b")]


def test_workers_plan_and_role_round_trip() -> None:
    devices: list[str | None] = ["0", None, "GPU-x"]
    assert gpus.decode_plan(gpus.encode_plan(devices)) == devices
    gpus.set_role(worker=1, devices=devices)
    try:
        assert gpus.role() == {"workers": 3, "worker": 1, "devices": devices}
    finally:
        gpus.set_role(worker=0, devices=[None])


def test_weights_of_local_folders_count_toward_the_memory_bound(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(bytes(1000))
    (tmp_path / "other.bin").write_bytes(bytes(50))
    assert gpus.weights_bytes([str(tmp_path), f"alias={tmp_path}", "builtin"]) == 2000


def test_worker_plan_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU host: `auto` is one process, and NVML is never asked.
    monkeypatch.setattr(gpus, "cuda_likely", lambda device: False)
    monkeypatch.setattr(gpus, "visible_gpus", lambda: pytest.fail("NVML asked on CPU"))
    assert worker_plan(Settings()) == [None]
    assert worker_plan(Settings(workers=2)) == [None, None]
    # A host with two GPUs and 16 cores: two workers on each, one GPU per worker.
    monkeypatch.setattr(gpus, "cuda_likely", lambda device: device != "cpu")
    monkeypatch.setattr(gpus, "visible_gpus", lambda: _host(2))
    monkeypatch.setattr(Settings, "available_cores", lambda self: 16)
    assert worker_plan(Settings()) == ["0", "1", "0", "1"]
    assert worker_plan(Settings(device="cpu")) == [None]
    assert worker_plan(Settings(workers=1)) == [None]
