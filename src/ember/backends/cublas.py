"""cuBLAS half-precision GEMMs through ctypes, on one stream, capturable in a CUDA graph.

Why not CuPy's own cuBLAS calls: each one sets the handle's stream first, and CuPy refuses that
during a stream capture ("calling cuBLAS API during stream capture is currently unsupported"),
so no forward with a matmul could be captured. cuBLAS itself captures fine once the handle has
its stream and a fixed workspace, both set here once, outside any capture. The library is the
one CuPy already loaded (found in /proc/self/maps), so versions always match.

Matrices are row-major, as everywhere else in ember; cuBLAS is column-major, so a row-major
product C = A·B is issued as the column-major Cᵀ = Bᵀ·Aᵀ (the usual swap of operands).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

from ember.errors import ModelError

_OP_N, _OP_T = 0, 1
R_16F, R_32F = 2, 0
_COMPUTE_32F = 68
_GEMM_DEFAULT = -1
WORKSPACE_BYTES = 32 * 2**20
"""cuBLAS's workspace: fixed, so a captured GEMM never allocates (32 MiB, as torch uses on
Hopper)."""

_c_int, _c_ll, _ptr = ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p


def loaded_cublas() -> str:
    """The path of the libcublas this process has loaded (CuPy's), else the system's."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if "/" in line else ""
            if Path(path).name.startswith("libcublas.so"):
                return path
    except OSError:
        pass
    found = ctypes.util.find_library("cublas")
    if found is None:
        raise ModelError("libcublas was not found (is CuPy installed for this CUDA version?)")
    return found


class Cublas:
    """One cuBLAS handle bound to `stream` with a fixed `workspace` (device pointer)."""

    def __init__(self, *, stream: int, workspace: int) -> None:
        lib = ctypes.CDLL(loaded_cublas())
        self._lib = lib
        handle = _ptr()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self._check(lib.cublasSetStream_v2(handle, _ptr(stream)), "cublasSetStream")
        self._check(
            lib.cublasSetWorkspace_v2(handle, _ptr(workspace), ctypes.c_size_t(WORKSPACE_BYTES)),
            "cublasSetWorkspace",
        )
        gemm = lib.cublasGemmEx
        gemm.restype = _c_int
        gemm.argtypes = [_ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _ptr, _ptr, _c_int,
                         _c_int, _ptr, _c_int, _c_int, _ptr, _ptr, _c_int, _c_int, _c_int,
                         _c_int]  # fmt: skip
        batched = lib.cublasGemmStridedBatchedEx
        batched.restype = _c_int
        batched.argtypes = [_ptr, _c_int, _c_int, _c_int, _c_int, _c_int, _ptr, _ptr, _c_int,
                            _c_int, _c_ll, _ptr, _c_int, _c_int, _c_ll, _ptr, _ptr, _c_int,
                            _c_int, _c_ll, _c_int, _c_int, _c_int]  # fmt: skip
        self._gemm = gemm
        self._batched = batched
        # Host scalars (the default pointer mode): read when a call is issued, so a captured
        # call keeps the value it was captured with. Kept alive for the handle's lifetime.
        self._scalars: dict[float, ctypes.c_float] = {}

    def _scalar(self, value: float) -> int:
        scalar = self._scalars.get(value)
        if scalar is None:
            scalar = self._scalars[value] = ctypes.c_float(value)
        return ctypes.addressof(scalar)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def linear(
        self, out: int, x: int, weight: int, *, tokens: int, n: int, k: int, out_type: int = R_16F
    ) -> None:
        """out (tokens, n) = x (tokens, k) fp16 · weightᵀ, weight (n, k) fp16; `out` is fp16, or
        float32 with `out_type=R_32F` (the classifier's logits)."""
        status = self._gemm(
            self.handle, _OP_T, _OP_N, n, tokens, k, self._scalar(1.0),
            weight, R_16F, k, x, R_16F, k, self._scalar(0.0), out, out_type, n,
            _COMPUTE_32F, _GEMM_DEFAULT,
        )  # fmt: skip
        self._check(status, "cublasGemmEx")

    def scores(
        self, out: int, q: int, k: int, *, batch: int, seq: int, dim: int, scale: float
    ) -> None:
        """out (batch, seq, seq) float32 = scale · q · kᵀ for q, k (batch, seq, dim) fp16."""
        status = self._batched(
            self.handle, _OP_T, _OP_N, seq, seq, dim, self._scalar(scale),
            k, R_16F, dim, seq * dim, q, R_16F, dim, seq * dim,
            self._scalar(0.0), out, R_32F, seq, seq * seq, batch, _COMPUTE_32F, _GEMM_DEFAULT,
        )  # fmt: skip
        self._check(status, "cublasGemmStridedBatchedEx")

    def context(self, out: int, probs: int, v: int, *, batch: int, seq: int, dim: int) -> None:
        """out (batch, seq, dim) fp16 = probs (batch, seq, seq) fp16 · v (batch, seq, dim)."""
        status = self._batched(
            self.handle, _OP_N, _OP_N, dim, seq, seq, self._scalar(1.0),
            v, R_16F, dim, seq * dim, probs, R_16F, seq, seq * seq,
            self._scalar(0.0), out, R_16F, dim, seq * dim, batch, _COMPUTE_32F, _GEMM_DEFAULT,
        )  # fmt: skip
        self._check(status, "cublasGemmStridedBatchedEx")

    def close(self) -> None:
        if self.handle:
            self._lib.cublasDestroy_v2(self.handle)
            self.handle = _ptr()
