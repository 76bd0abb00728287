"""The fused attention kernel against the materialised path it replaces, on every GPU bucket
length and head size it takes (CUDA and CuPy only), and which models it serves (everywhere)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ember.backends import cupy_encoder
from ember.backends.base import CUPY_SEQ, GPU_SEQ
from ember.backends.bert import EncoderConfig
from ember.backends.cuda_kernels import FLASH_DIMS
from tests.unit.backends.test_cupy_backend import gpu


def _config(heads: int, dim: int) -> EncoderConfig:
    return EncoderConfig(
        family="bert", hidden=heads * dim, heads=heads, intermediate=4 * heads * dim, layers=1,
        eps=1e-12, act="gelu", position_offset=0, head_act="tanh",
    )  # fmt: skip


def test_models_with_another_head_size_keep_the_materialised_attention() -> None:
    assert cupy_encoder.flash_from(_config(12, 64)) == cupy_encoder.FLASH_FROM
    assert cupy_encoder.flash_from(_config(12, 32)) == cupy_encoder.FLASH_FROM
    assert cupy_encoder.flash_from(_config(8, 48)) is None
    assert cupy_encoder.flash_from(_config(8, 128)) is None


@pytest.fixture(scope="module")
def device() -> Iterator[dict[str, Any]]:
    import cupy as cp

    from ember.backends.cublas import WORKSPACE_BYTES, Cublas
    from ember.backends.cuda_kernels import Kernels

    stream = cp.cuda.Stream(non_blocking=True)
    workspace = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
    cp.cuda.device.get_cublas_handle()
    blas = Cublas(stream=stream.ptr, workspace=workspace.data.ptr)
    yield {"cp": cp, "stream": stream, "blas": blas, "kernels": Kernels.compile()}
    blas.close()


# Unmasked keys of each row: all, part, one (the batcher's padding rows), none.
ROW_LENGTHS = (lambda seq: seq, lambda seq: seq // 2 + 3, lambda seq: 1, lambda seq: 0)


def _attend(device: dict[str, Any], *, heads: int, dim: int, seq: int) -> dict[str, np.ndarray]:
    """Attention of one random QKV projection, fused and materialised, as fp32 (tokens, hidden),
    and a numpy fp32 reference."""
    cp, stream = device["cp"], device["stream"]
    config, rows = _config(heads, dim), len(ROW_LENGTHS)
    tokens, hidden = rows * seq, heads * dim
    ws = cupy_encoder.Workspace(cp, tokens=tokens, seq=seq, config=config, width=1, scored_seq=seq)
    rng = np.random.default_rng(seq * 100 + dim)
    qkv = rng.standard_normal((tokens, 3 * hidden)).astype(np.float16)
    bias = rng.standard_normal(3 * hidden).astype(np.float16)
    mask = np.zeros((rows, seq), dtype=np.int32)
    for r, length in enumerate(ROW_LENGTHS):
        mask[r, : length(seq)] = 1
    ws.inputs[tokens : 2 * tokens].set(mask.reshape(-1))
    device_bias = cp.asarray(bias)
    out = {}
    for fused in (True, False):
        ws.tmp[: tokens * 3 * hidden].set(qkv.reshape(-1))
        with stream:
            context, _ = cupy_encoder.attention(
                kernels=device["kernels"], blas=device["blas"], v=ws.view(rows, seq),
                config=config, qkv_bias=int(device_bias.data.ptr), fused=fused,
            )  # fmt: skip
        stream.synchronize()
        buffer = ws.x2 if context == int(ws.x2.data.ptr) else ws.tmp
        out["fused" if fused else "scored"] = buffer[: tokens * hidden].get().astype(np.float32)
    biased = (qkv.astype(np.float32) + bias.astype(np.float32)).astype(np.float16)
    q, k, v = np.moveaxis(biased.astype(np.float32).reshape(rows, seq, 3, heads, dim), 2, 0)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim)
    keep = mask[:, None, None, :].astype(bool)
    masked = np.where(keep, scores, -np.inf)
    top = masked.max(-1, keepdims=True)
    e = np.exp(masked - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdims=True)
    probs = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    out["reference"] = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(tokens, hidden)
    return {key: value.reshape(tokens, hidden) for key, value in out.items()}


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    live = (np.abs(a).sum(1) > 0) | (np.abs(b).sum(1) > 0)
    a, b = a[live], b[live]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cos.min())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dim", FLASH_DIMS)
@pytest.mark.parametrize("seq", sorted(set(CUPY_SEQ) | set(GPU_SEQ)))
def test_fused_attention_matches_the_materialised_one(
    device: dict[str, Any], seq: int, dim: int
) -> None:
    heads = 12 if dim > 16 else 2
    got = _attend(device, heads=heads, dim=dim, seq=seq)
    fused, scored = got["fused"], got["scored"]
    assert np.isfinite(fused).all()
    assert (fused[3 * seq :] == 0).all()  # the all-masked row: zeros, never NaN
    assert _min_cos(fused, scored) >= 0.999
    assert _min_cos(fused, got["reference"]) >= 0.999
    np.testing.assert_allclose(fused, scored, atol=2e-2)
