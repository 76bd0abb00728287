"""ember's CUDA kernels (`cuda_kernels.cu`) as typed Python calls: one method per kernel with
its arguments by name, so no caller orders a positional argument list by hand.

The C signatures are read from the source itself: `_launch` orders the keyword arguments as the
kernel declares them and converts each to its C type (pointers, `int`, `long`, `float`), and
refuses a call whose names differ from the declaration. Each method also owns its kernel's launch
geometry. Compiled by NVRTC through CuPy the first time (~0.1-0.5 s), then loaded from CuPy's
disk cache (~1 ms).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import ModelError

SOURCE = Path(__file__).with_name("cuda_kernels.cu")
MAX_HIDDEN = 32 * 32
"""The norm kernels hold a row in one warp's registers, 32 values a lane (`MAX_PER_LANE`)."""
ACTIVATION = {"none": 0, "gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "relu": 3, "tanh": 4}
"""`bias_act`'s `act` codes."""
POOLING = {"mean": 0, "cls": 1, "max": 2, "lasttoken": 3}
"""`pool`'s `method` codes."""

FLASH_DIMS = (16, 32, 64)
"""Head sizes `flash_attention` takes (one template instance each in the `.cu`)."""
_FLASH_Q, _FLASH_K, _FLASH_PAD, _FLASH_THREADS = 64, 64, 8, 128
"""The `.cu`'s FLASH_Q, FLASH_K and FLASH_PAD, and 32 · FLASH_WARPS."""

_ROW_THREADS = 128
"""Threads per block of the row kernels: a warp per row, 4 rows a block."""
_ROWS_PER_BLOCK = _ROW_THREADS // 32
_ELEMENTWISE = 256

_C_TYPES: dict[str, Callable[[Any], Any]] = {
    "int": np.int32,
    "long": np.int64,
    "float": np.float32,
}
_DECLARATION = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


@dataclass(frozen=True, slots=True)
class Signature:
    """A kernel's parameters in declaration order, each with its converter to the C type."""

    names: tuple[str, ...]
    converters: tuple[Callable[[Any], Any], ...]


def signatures(source: str) -> dict[str, Signature]:
    """Every `extern "C" __global__` kernel of `source` → its parameters (pointers as uint64)."""
    found: dict[str, Signature] = {}
    for name, params in _DECLARATION.findall(source):
        names, converters = [], []
        for param in " ".join(params.split()).split(","):
            *kind, arg = param.replace("*", " * ").split()
            names.append(arg)
            converters.append(np.uint64 if "*" in kind else _C_TYPES[kind[-1]])
        found[name] = Signature(tuple(names), tuple(converters))
    return found


def use_kernel_cache(cache_dir: Path) -> Path:
    """Keep CuPy's compiled kernels under ember's cache folder (writable wherever artifacts
    are, unlike a container's home) unless CuPy's own CUPY_CACHE_DIR says otherwise; returns
    the folder in use."""
    return Path(os.environ.setdefault("CUPY_CACHE_DIR", str(cache_dir / "cuda-kernels")))


def prepare_kernels(cache_dir: Path) -> Path:
    """`ember prepare --device cuda`: compile the kernels into the cache ahead of serving."""
    folder = use_kernel_cache(cache_dir)
    try:
        Kernels.compile().load_all()
    except Exception as exc:
        raise ModelError(f"cannot compile the CUDA kernels: {exc}") from exc
    return folder


def _warps(rows: int) -> int:
    return (rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK


def _elements(n: int) -> int:
    return (n + _ELEMENTWISE - 1) // _ELEMENTWISE


class Kernels:
    """The compiled kernels; each method issues one launch on the current CuPy stream.
    A method has its kernel's name and C argument names (less the totals it computes itself);
    pointers are device addresses (`int`), fp16 unless the docstring says fp32."""

    def __init__(self, *, module: Any, source: str) -> None:
        self._signatures = signatures(source)
        self._functions = {name: module.get_function(name) for name in self._signatures}

    @classmethod
    def compile(cls) -> Kernels:
        import cupy as cp

        source = SOURCE.read_text("utf-8")
        return cls(module=cp.RawModule(code=source, options=("--std=c++14",)), source=source)

    def load_all(self) -> None:
        """Force the compile and the module load now (reading an attribute does both)."""
        for function in self._functions.values():
            _ = function.attributes

    def _launch(
        self, name: str, grid: int, block: int, *, shared_mem: int = 0, **args: int | float
    ) -> None:
        sig = self._signatures[name]
        if tuple(sorted(args)) != tuple(sorted(sig.names)):
            raise TypeError(f"{name} takes {sig.names}, was given {tuple(args)}")
        pairs = zip(sig.names, sig.converters, strict=True)
        values = tuple(convert(args[arg]) for arg, convert in pairs)
        self._functions[name]((grid,), (block,), values, shared_mem=shared_mem)

    def embed_layernorm(
        self, *, out: int, ids: int, types: int, word: int, pos: int, type_table: int,
        gamma: int, beta: int, seq: int, hidden: int, eps: float, tokens: int,
    ) -> None:  # fmt: skip
        """out[t] = LayerNorm(word[ids[t]] + pos[t % seq] + type_table[types[t]]); type_table 0:
        no token types."""
        self._launch(
            "embed_layernorm", _warps(tokens), _ROW_THREADS, out=out, ids=ids, types=types,
            word=word, pos=pos, type_table=type_table, gamma=gamma, beta=beta, seq=seq,
            hidden=hidden, eps=eps, tokens=tokens,
        )  # fmt: skip

    def add_layernorm(
        self, *, x: int, y: int, bias: int, gamma: int, beta: int, hidden: int, eps: float,
        tokens: int,
    ) -> None:  # fmt: skip
        """x = LayerNorm(x + y + bias) in place, over (tokens, hidden)."""
        self._launch(
            "add_layernorm", _warps(tokens), _ROW_THREADS, x=x, y=y, bias=bias, gamma=gamma,
            beta=beta, hidden=hidden, eps=eps, tokens=tokens,
        )  # fmt: skip

    def split_heads(
        self, *, heads_out: int, qkv: int, bias: int, seq: int, heads: int, dim: int, tokens: int
    ) -> None:
        """qkv (tokens, 3·hidden) + bias → q, k, v, each (rows, heads, seq, dim), one after
        another at `heads_out`."""
        self._launch(
            "split_heads", _elements(tokens * 3 * heads * dim), _ELEMENTWISE,
            heads_out=heads_out, qkv=qkv, bias=bias, seq=seq, heads=heads, dim=dim, tokens=tokens,
        )  # fmt: skip

    def masked_softmax(
        self, *, probs: int, scores: int, mask: int, seq: int, heads: int, score_rows: int
    ) -> None:
        """fp16 probabilities over the unmasked keys of each fp32 score row; zeros for a row with
        none (a padding row), never NaN."""
        self._launch(
            "masked_softmax", _warps(score_rows), _ROW_THREADS, probs=probs, scores=scores,
            mask=mask, seq=seq, heads=heads, score_rows=score_rows,
        )  # fmt: skip

    def merge_heads(
        self, *, out: int, ctx: int, seq: int, heads: int, dim: int, tokens: int
    ) -> None:
        """ctx (rows, heads, seq, dim) → out (tokens, heads·dim)."""
        total = tokens * heads * dim
        self._launch(
            "merge_heads", _elements(total), _ELEMENTWISE, out=out, ctx=ctx, seq=seq, heads=heads,
            dim=dim, total=total,
        )  # fmt: skip

    def bias_act(self, *, y: int, bias: int, rows: int, cols: int, act: str) -> None:
        """y = act(y + bias) in place over (rows, cols); `act` is a key of ACTIVATION."""
        n = rows * cols
        self._launch(
            "bias_act", _elements(n), _ELEMENTWISE, y=y, bias=bias, cols=cols, n=n,
            act=ACTIVATION[act],
        )  # fmt: skip

    def add_bias_f32(self, *, y: int, bias: int, rows: int, cols: int) -> None:
        """y (fp32) += bias (fp16) over (rows, cols)."""
        n = rows * cols
        self._launch("add_bias_f32", _elements(n), _ELEMENTWISE, y=y, bias=bias, cols=cols, n=n)

    def pool(
        self, *, out: int, x: int, mask: int, rows: int, seq: int, hidden: int, method: str
    ) -> None:
        """out (rows, hidden) fp32 pools x (rows, seq, hidden) over the unmasked tokens;
        `method` is a key of POOLING."""
        self._launch(
            "pool", rows, _ROW_THREADS, out=out, x=x, mask=mask, seq=seq, hidden=hidden,
            method=POOLING[method],
        )  # fmt: skip

    def take_cls(self, *, out: int, x: int, rows: int, seq: int, hidden: int) -> None:
        """out (rows, hidden) = x[:, 0] for x (rows, seq, hidden): the token heads read."""
        total = rows * hidden
        self._launch(
            "take_cls", _elements(total), _ELEMENTWISE, out=out, x=x, seq=seq, hidden=hidden,
            total=total,
        )  # fmt: skip

    def flash_attention(
        self, *, out: int, qkv: int, bias: int, mask: int, rows: int, seq: int, heads: int,
        dim: int, scale: float,
    ) -> None:  # fmt: skip
        """out (tokens, heads·dim) = the masked attention of q, k, v = qkv (tokens, 3, heads,
        dim) + bias, fused (no scores in memory); `dim` one of FLASH_DIMS. A row whose mask is
        all zeros (a padding row) gets zeros."""
        if dim not in FLASH_DIMS:
            raise ValueError(f"flash_attention takes head sizes {FLASH_DIMS}, not {dim}")
        blocks = rows * heads * ((seq + _FLASH_Q - 1) // _FLASH_Q)
        # Keys and values, each (FLASH_K, dim + pad) in fp16, then one float per key for the mask.
        shared = 2 * 2 * _FLASH_K * (dim + _FLASH_PAD) + 4 * _FLASH_K
        self._launch(
            "flash_attention", blocks, _FLASH_THREADS, shared_mem=shared, out=out, qkv=qkv,
            bias=bias, mask=mask, seq=seq, heads=heads, dim=dim, scale=scale,
        )  # fmt: skip
