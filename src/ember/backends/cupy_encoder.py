"""The BERT-shaped encoder on CUDA in fp16 (`bert.py`'s forward): cuBLAS GEMMs (fp16 in, fp32
accumulate, `cublas.py`) and ember's fused kernels (`cuda_kernels.py`), over one workspace whose
slices have names.

Every intermediate lives in the workspace, sized for the largest batch (warm-up runs it first),
so steady state never allocates and every bucket shape can be captured as a CUDA graph over
fixed addresses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.backends.bert import EncoderConfig, named_weights
from ember.backends.cublas import R_32F, Cublas
from ember.backends.cuda_kernels import FLASH_DIMS, Kernels
from ember.models import Task

_HALF, _INT = 2, 4
_LAYER = ("qkv_w", "qkv_b", "out_w", "out_b", "ln1_w", "ln1_b", "up_w", "up_b", "down_w", "down_b",
          "ln2_w", "ln2_b")  # fmt: skip
"""One layer's weights on the device (Q, K and V fused)."""

FLASH_FROM = 0
"""Shortest padded length whose attention runs fused (`flash_attention`: no scores in memory);
shorter ones materialise fp32 scores (two batched GEMMs and a softmax). 0: fused at every
length, since it was faster at each one measured (`benchmarks/gpu/attention.py` on the H200:
attention alone 2.2-7x, the BERT-base-sized forward 1.3-1.6x, MiniLM 1.45-1.86x)."""


def flash_from(config: EncoderConfig) -> int | None:
    """The shortest length the fused attention takes for this model; None: never (head size)."""
    return FLASH_FROM if config.head_dim in FLASH_DIMS else None


@dataclass(frozen=True, slots=True)
class View:
    """Device addresses of one (rows, seq) batch's slices of the workspace."""

    rows: int
    seq: int
    ids: int
    """int32 (rows, seq); `mask` and `types` follow it, so one copy uploads all three."""
    mask: int
    types: int
    x: int
    """fp16 (tokens, hidden): the hidden state, updated in place layer by layer."""
    x2: int
    """fp16 (tokens, hidden): GEMM outputs before their residual add, attention context."""
    tmp: int
    """fp16 (tokens, max(3·hidden, intermediate)): QKV projection, merged heads or the output
    projection, FFN."""
    q: int
    """fp16 (rows, heads, seq, head_dim); `k` and `v` follow it (split_heads writes all three)."""
    k: int
    v: int
    scores: int
    """fp32 (rows, heads, seq, seq), for lengths whose attention is not fused."""
    probs: int
    """fp16 (rows, heads, seq, seq), likewise."""
    out: int
    """fp32 (rows, width): pooled vectors or logits."""

    @property
    def tokens(self) -> int:
        return self.rows * self.seq


class Workspace:
    """Device buffers for any batch of up to `tokens` tokens and `seq` positions. Scores for
    lengths up to `scored_seq` (default: the lengths the fused attention does not take)."""

    def __init__(
        self, cp: Any, *, tokens: int, seq: int, config: EncoderConfig, width: int,
        scored_seq: int | None = None,
    ) -> None:  # fmt: skip
        self.tokens, self.seq, self._hidden = tokens, seq, config.hidden
        h = config.hidden
        self.inputs = cp.empty(3 * tokens, dtype=cp.int32)
        self.x = cp.empty(tokens * h, dtype=cp.float16)
        self.x2 = cp.empty(tokens * h, dtype=cp.float16)
        self.tmp = cp.empty(tokens * max(3 * h, config.intermediate), dtype=cp.float16)
        if scored_seq is None:
            fused = flash_from(config)
            scored_seq = seq if fused is None else min(seq, fused - 1)
        scored_seq = max(scored_seq, 0)
        # Split heads, and score rows for every (row, head, query) of any batch that fits
        # (rows·seq ≤ tokens) of up to `scored_seq` keys each: the unfused attention's buffers
        # (none where every length is fused).
        self.heads = cp.empty(3 * tokens * h if scored_seq else 0, dtype=cp.float16)
        self.scores = cp.empty(tokens * scored_seq * config.heads, dtype=cp.float32)
        self.probs = cp.empty(tokens * scored_seq * config.heads, dtype=cp.float16)
        # One output row per batch row; rows ≤ tokens whatever the length.
        self.out = cp.empty(tokens * width, dtype=cp.float32)

    def fits(self, rows: int, seq: int) -> bool:
        return rows * seq <= self.tokens and seq <= self.seq

    def view(self, rows: int, seq: int) -> View:
        tokens, h = rows * seq, self._hidden
        ids, q = int(self.inputs.data.ptr), int(self.heads.data.ptr)
        return View(
            rows=rows,
            seq=seq,
            ids=ids,
            mask=ids + tokens * _INT,
            types=ids + 2 * tokens * _INT,
            x=int(self.x.data.ptr),
            x2=int(self.x2.data.ptr),
            tmp=int(self.tmp.data.ptr),
            q=q,
            k=q + tokens * h * _HALF,
            v=q + 2 * tokens * h * _HALF,
            scores=int(self.scores.data.ptr),
            probs=int(self.probs.data.ptr),
            out=int(self.out.data.ptr),
        )


class CupyEncoder:
    """The model's weights on the device and its forward over a workspace view; `forward` only
    issues work on the current stream (no host sync, no allocation: capturable)."""

    def __init__(
        self,
        *,
        cp: Any,
        config: EncoderConfig,
        host_weights: dict[str, np.ndarray[Any, Any]],
        task: Task,
        pooling: str,
        width: int,
        kernels: Kernels,
        blas: Cublas,
    ) -> None:
        self.config, self.task, self.pooling, self.width = config, task, pooling, width
        self._k, self._blas = kernels, blas
        self.flash_from = flash_from(config)
        """Fused attention from this padded length on (None: never); the workspace's scores
        must cover the shorter ones."""
        named = named_weights(host_weights, config=config, task=task)
        for i in range(config.layers):
            for kind in ("w", "b"):
                parts = [named.pop(f"{i}.{p}_{kind}") for p in "qkv"]
                named[f"{i}.qkv_{kind}"] = np.concatenate(parts)
        # fp16 on the device; kept referenced here, addressed by pointer below.
        self._arrays = {
            key: cp.asarray(np.ascontiguousarray(value, dtype=np.float16))
            for key, value in named.items()
        }
        self.w = {key: int(array.data.ptr) for key, array in self._arrays.items()}
        self._layers = [
            {name: self.w[f"{i}.{name}"] for name in _LAYER} for i in range(config.layers)
        ]

    @property
    def loaded(self) -> bool:
        return bool(self._arrays)

    def free(self) -> None:
        self._arrays.clear()
        self.w.clear()
        self._layers.clear()

    def forward(self, v: View) -> None:
        """Encode the batch whose ids, mask and types are in `v` into `v.out`."""
        c, k, blas, w = self.config, self._k, self._blas, self.w
        h, tokens = c.hidden, v.tokens
        k.embed_layernorm(
            out=v.x, ids=v.ids, types=v.types, word=w["word"], pos=w["position"],
            type_table=w.get("types", 0), gamma=w["emb_ln_w"], beta=w["emb_ln_b"], seq=v.seq,
            hidden=h, eps=c.eps, tokens=tokens,
        )  # fmt: skip
        for layer in self._layers:
            self._attention(v, layer)
            blas.linear(v.tmp, v.x, layer["up_w"], tokens=tokens, n=c.intermediate, k=h)
            k.bias_act(y=v.tmp, bias=layer["up_b"], rows=tokens, cols=c.intermediate, act=c.act)
            blas.linear(v.x2, v.tmp, layer["down_w"], tokens=tokens, n=h, k=c.intermediate)
            k.add_layernorm(
                x=v.x, y=v.x2, bias=layer["down_b"], gamma=layer["ln2_w"], beta=layer["ln2_b"],
                hidden=h, eps=c.eps, tokens=tokens,
            )  # fmt: skip
        if self.task is Task.EMBED:
            k.pool(out=v.out, x=v.x, mask=v.mask, rows=v.rows, seq=v.seq, hidden=h,
                   method=self.pooling)  # fmt: skip
        else:
            self._head(v)

    def _attention(self, v: View, layer: dict[str, int]) -> None:
        """x = LayerNorm(x + attention(x)): the fused QKV GEMM, attention, the output GEMM."""
        c, k, blas = self.config, self._k, self._blas
        h, tokens = c.hidden, v.tokens
        blas.linear(v.tmp, v.x, layer["qkv_w"], tokens=tokens, n=3 * h, k=h)
        fused = self.flash_from is not None and v.seq >= self.flash_from
        context, free = attention(
            kernels=k, blas=blas, v=v, config=c, qkv_bias=layer["qkv_b"], fused=fused
        )
        blas.linear(free, context, layer["out_w"], tokens=tokens, n=h, k=h)
        k.add_layernorm(
            x=v.x, y=free, bias=layer["out_b"], gamma=layer["ln1_w"], beta=layer["ln1_b"],
            hidden=h, eps=c.eps, tokens=tokens,
        )  # fmt: skip

    def _head(self, v: View) -> None:
        """Sequence classification on the first token: dense → tanh/ReLU → projection (fp32)."""
        c, k, blas, w = self.config, self._k, self._blas, self.w
        h, rows = c.hidden, v.rows
        k.take_cls(out=v.tmp, x=v.x, rows=rows, seq=v.seq, hidden=h)
        blas.linear(v.x2, v.tmp, w["pooler_w"], tokens=rows, n=h, k=h)
        k.bias_act(y=v.x2, bias=w["pooler_b"], rows=rows, cols=h, act=c.head_act)
        blas.linear(v.out, v.x2, w["classifier_w"], tokens=rows, n=self.width, k=h, out_type=R_32F)
        k.add_bias_f32(y=v.out, bias=w["classifier_b"], rows=rows, cols=self.width)


def attention(
    *, kernels: Kernels, blas: Cublas, v: View, config: EncoderConfig, qkv_bias: int, fused: bool
) -> tuple[int, int]:
    """The attention of the QKV projection in `v.tmp` (its bias not yet added) → (the merged
    context (tokens, hidden), a (tokens, hidden) buffer free for the next GEMM's output).

    `fused`: one `flash_attention` kernel (no scores in memory; `config.head_dim` in
    FLASH_DIMS). Otherwise through fp32 scores in the workspace: split heads, QKᵀ, masked
    softmax, P·V, merge heads."""
    c, k = config, kernels
    scale = 1.0 / math.sqrt(c.head_dim)
    if fused:
        k.flash_attention(
            out=v.x2, qkv=v.tmp, bias=qkv_bias, mask=v.mask, rows=v.rows, seq=v.seq,
            heads=c.heads, dim=c.head_dim, scale=scale,
        )  # fmt: skip
        return v.x2, v.tmp
    rows_heads = v.rows * c.heads
    k.split_heads(heads_out=v.q, qkv=v.tmp, bias=qkv_bias, seq=v.seq, heads=c.heads,
                  dim=c.head_dim, tokens=v.tokens)  # fmt: skip
    blas.scores(v.scores, v.q, v.k, batch=rows_heads, seq=v.seq, dim=c.head_dim, scale=scale)
    k.masked_softmax(probs=v.probs, scores=v.scores, mask=v.mask, seq=v.seq, heads=c.heads,
                     score_rows=rows_heads * v.seq)  # fmt: skip
    blas.context(v.x2, v.probs, v.v, batch=rows_heads, seq=v.seq, dim=c.head_dim)
    k.merge_heads(out=v.tmp, ctx=v.x2, seq=v.seq, heads=c.heads, dim=c.head_dim, tokens=v.tokens)
    return v.tmp, v.x2
