"""The kernel wrappers against `cuda_kernels.cu` itself (no GPU needed): every kernel has a
method, and each method passes its arguments in the declared order and C types."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from ember.backends import cuda_kernels
from ember.backends.cuda_kernels import Kernels, signatures

SOURCE = cuda_kernels.SOURCE.read_text("utf-8")


class Recorder:
    """Stands in for a CuPy RawModule: each function records its launches."""

    def __init__(self) -> None:
        self.launches: list[tuple[str, tuple[int], tuple[int], tuple[Any, ...], int]] = []

    def get_function(self, name: str) -> Any:
        def launch(
            grid: tuple[int], block: tuple[int], args: tuple[Any, ...], *, shared_mem: int
        ) -> None:
            self.launches.append((name, grid, block, args, shared_mem))

        return launch


def test_the_source_declares_the_kernels_with_their_c_types() -> None:
    sigs = signatures(SOURCE)
    assert set(sigs) == {
        "embed_layernorm", "add_layernorm", "split_heads", "masked_softmax", "merge_heads",
        "bias_act", "add_bias_f32", "pool", "take_cls", "flash_attention",
    }  # fmt: skip
    pool = sigs["pool"]
    assert pool.names == ("out", "x", "mask", "seq", "hidden", "method")
    assert pool.converters == (np.uint64, np.uint64, np.uint64, np.int32, np.int32, np.int32)
    assert sigs["add_layernorm"].converters[-2:] == (np.float32, np.int64)


@pytest.mark.parametrize("name", sorted(signatures(SOURCE)))
def test_each_wrapper_launches_its_kernel_in_declared_order(name: str) -> None:
    recorder = Recorder()
    kernels = Kernels(module=recorder, source=SOURCE)
    method = getattr(kernels, name)
    params = inspect.signature(method).parameters
    # Distinct small values per argument, so that any swap shows.
    args: dict[str, Any] = {}
    for i, p in enumerate(params):
        if p == "act":
            args[p] = "tanh"
        elif p == "method":
            args[p] = "cls"
        elif p == "dim":
            args[p] = 64  # a head size every kernel takes (flash_attention: FLASH_DIMS)
        else:
            args[p] = 1000 + i
    method(**args)
    ((launched, grid, block, values, _),) = recorder.launches
    assert launched == name and grid[0] >= 1 and block[0] % 32 == 0
    sig = signatures(SOURCE)[name]
    for arg, value, convert in zip(sig.names, values, sig.converters, strict=True):
        assert type(value) is convert
        if arg in args and arg not in ("act", "method"):
            assert value == args[arg], arg
    codes = dict(zip(sig.names, values, strict=True))
    assert codes.get("act", 4) == 4 and codes.get("method", 1) == 1  # tanh, cls


def test_a_call_with_other_names_than_the_kernel_is_refused() -> None:
    kernels = Kernels(module=Recorder(), source=SOURCE)
    with pytest.raises(TypeError, match="take_cls takes"):
        kernels._launch("take_cls", 1, 32, out=1, x=2, seq=3, hidden=4)


def test_flash_attention_launches_a_block_per_64_queries_with_its_tiles_in_shared_memory() -> None:
    recorder = Recorder()
    kernels = Kernels(module=recorder, source=SOURCE)
    kernels.flash_attention(
        out=1, qkv=2, bias=3, mask=4, rows=32, seq=208, heads=12, dim=64, scale=0.125
    )
    ((_, grid, block, _, shared),) = recorder.launches
    assert grid == (32 * 12 * 4,) and block == (128,)
    # K and V (64, 64 + 8) in fp16, a float of mask per key: under the 48 KiB a block gets
    # without opting in.
    assert shared == 2 * 64 * 72 * 2 + 64 * 4 < 48 * 1024


def test_flash_attention_refuses_a_head_size_it_has_no_instance_for() -> None:
    kernels = Kernels(module=Recorder(), source=SOURCE)
    with pytest.raises(ValueError, match="head sizes"):
        kernels.flash_attention(
            out=1, qkv=2, bias=3, mask=4, rows=1, seq=16, heads=2, dim=48, scale=0.1
        )
