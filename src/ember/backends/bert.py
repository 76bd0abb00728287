"""A BERT encoder in plain torch: the forward of transformers' `BertModel` (and the head of
`BertForSequenceClassification`), loaded straight from `model.safetensors`.

Why not transformers: importing it (with the modules its BERT pulls in: torch._dynamo,
torch.distributed.tensor, scipy) costs several seconds at startup, more than everything else
ember does before it is ready; and its forward checks the mask on the host (a sync) in eager
mode. This forward has no host syncs and no data-dependent control flow, so every bucket shape
can be captured as a CUDA graph, and it fuses the Q, K and V projections into one matmul.

Only the plain architecture is covered (absolute positions, post-norm, gelu/relu); anything else
returns None from `load_bert` and the torch backend falls back to transformers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ember.backends.torch")

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_HEADS = {"BertForSequenceClassification"}


def supported(spec: ModelSpec) -> dict[str, Any] | None:
    """The model's config when this encoder can run it, else None (transformers will)."""
    try:
        config: dict[str, Any] = json.loads((spec.path / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if config.get("model_type") != "bert":
        return None
    if config.get("position_embedding_type", "absolute") != "absolute":
        return None
    if config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        return None
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return None
    if spec.task is not Task.EMBED:
        architectures = config.get("architectures") or []
        if not architectures or architectures[0] not in _HEADS:
            return None
    if not (spec.path / "model.safetensors").is_file():
        return None
    return config


class BertEncoder:
    """`forward(ids, mask, type_ids)` → last hidden state (rows, seq, hidden); `head(hidden)` →
    logits for sequence classification. Weights live on one device in one dtype."""

    def __init__(
        self, *, config: dict[str, Any], weights: dict[str, torch.Tensor], task: Task
    ) -> None:
        import torch
        from torch.nn import functional as F

        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.layers = int(config["num_hidden_layers"])
        self.task = task
        act = config.get("hidden_act", "gelu")
        self._act: Callable[[torch.Tensor], torch.Tensor]
        if act == "gelu":
            self._act = F.gelu
        elif act == "relu":
            self._act = F.relu
        else:
            self._act = lambda x: F.gelu(x, approximate="tanh")

        prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""

        def take(name: str) -> torch.Tensor:
            key = prefix + name
            if key not in weights:
                raise KeyError(f"weight {key} is missing")
            return weights[key]

        self.word = take("embeddings.word_embeddings.weight")
        self.position = take("embeddings.position_embeddings.weight")
        types = prefix + "embeddings.token_type_embeddings.weight"
        self.types = weights.get(types)
        self.emb_norm = (take("embeddings.LayerNorm.weight"), take("embeddings.LayerNorm.bias"))
        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (take(f"{p}attention.self.{n}.weight") for n in ("query", "key", "value"))
            qb, kb, vb = (take(f"{p}attention.self.{n}.bias") for n in ("query", "key", "value"))
            self.blocks.append(
                {
                    "qkv_w": torch.cat([q, k, v]).contiguous(),
                    "qkv_b": torch.cat([qb, kb, vb]).contiguous(),
                    "out_w": take(f"{p}attention.output.dense.weight"),
                    "out_b": take(f"{p}attention.output.dense.bias"),
                    "ln1_w": take(f"{p}attention.output.LayerNorm.weight"),
                    "ln1_b": take(f"{p}attention.output.LayerNorm.bias"),
                    "up_w": take(f"{p}intermediate.dense.weight"),
                    "up_b": take(f"{p}intermediate.dense.bias"),
                    "down_w": take(f"{p}output.dense.weight"),
                    "down_b": take(f"{p}output.dense.bias"),
                    "ln2_w": take(f"{p}output.LayerNorm.weight"),
                    "ln2_b": take(f"{p}output.LayerNorm.bias"),
                }
            )
        self.pooler: tuple[torch.Tensor, torch.Tensor] | None = None
        self.classifier: tuple[torch.Tensor, torch.Tensor] | None = None
        if task is not Task.EMBED:
            self.pooler = (take("pooler.dense.weight"), take("pooler.dense.bias"))
            self.classifier = (weights["classifier.weight"], weights["classifier.bias"])
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, type_ids: torch.Tensor
    ) -> torch.Tensor:
        import torch
        from torch.nn import functional as F

        rows, seq = ids.shape
        x = self.word[ids] + self.position[:seq]
        if self.types is not None:
            x = x + self.types[type_ids]
        x = F.layer_norm(x, (self.hidden,), *self.emb_norm, self.eps)
        # True = attend; broadcast over heads and query positions.
        keep = mask.to(torch.bool)[:, None, None, :]
        for b in self.blocks:
            qkv = F.linear(x, b["qkv_w"], b["qkv_b"]).view(rows, seq, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=self.scale)
            attn = attn.transpose(1, 2).reshape(rows, seq, self.hidden)
            x = F.layer_norm(
                x + F.linear(attn, b["out_w"], b["out_b"]),
                (self.hidden,),
                b["ln1_w"],
                b["ln1_b"],
                self.eps,
            )
            up = self._act(F.linear(x, b["up_w"], b["up_b"]))
            x = F.layer_norm(
                x + F.linear(up, b["down_w"], b["down_b"]),
                (self.hidden,),
                b["ln2_w"],
                b["ln2_b"],
                self.eps,
            )
        hidden: torch.Tensor = x
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sequence-classification logits from the [CLS] row (pooler → tanh → classifier)."""
        assert self.pooler is not None and self.classifier is not None
        import torch
        from torch.nn import functional as F

        pooled = torch.tanh(F.linear(hidden[:, 0], *self.pooler))
        logits: torch.Tensor = F.linear(pooled, *self.classifier)
        return logits


def load_bert(spec: ModelSpec, *, device: str, dtype: torch.dtype) -> BertEncoder | None:
    """The encoder for `spec` on `device` in `dtype`, or None when the model is not plain BERT."""
    config = supported(spec)
    if config is None:
        return None
    from safetensors.torch import load_file

    path: Path = spec.path / "model.safetensors"
    weights = load_file(str(path), device=device)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    try:
        return BertEncoder(config=config, weights=weights, task=spec.task)
    except KeyError as exc:
        log.info("%s: not loadable as plain BERT (%s); using transformers", spec.name, exc)
        return None
