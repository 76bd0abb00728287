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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ember.backends.torch")

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_HEADS = {"BertForSequenceClassification"}
W = TypeVar("W")


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


_LAYER = {
    "q_w": "attention.self.query.weight",
    "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight",
    "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight",
    "v_b": "attention.self.value.bias",
    "out_w": "attention.output.dense.weight",
    "out_b": "attention.output.dense.bias",
    "ln1_w": "attention.output.LayerNorm.weight",
    "ln1_b": "attention.output.LayerNorm.bias",
    "up_w": "intermediate.dense.weight",
    "up_b": "intermediate.dense.bias",
    "down_w": "output.dense.weight",
    "down_b": "output.dense.bias",
    "ln2_w": "output.LayerNorm.weight",
    "ln2_b": "output.LayerNorm.bias",
}
"""Short names of one encoder layer's weights → their names under `encoder.layer.N.`."""


def named_weights(weights: Mapping[str, W], *, layers: int, task: Task) -> dict[str, W]:
    """The checkpoint's tensors under short names (any array type: torch, numpy, CuPy):
    `word`, `position`, `types` (if any), `emb_ln_w/b`, `N.<layer name>` for each layer, and
    for rerank/classify `pooler_w/b`, `classifier_w/b`. KeyError names a missing weight."""
    prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""

    def take(name: str) -> W:
        if prefix + name not in weights:
            raise KeyError(f"weight {prefix + name} is missing")
        return weights[prefix + name]

    out = {
        "word": take("embeddings.word_embeddings.weight"),
        "position": take("embeddings.position_embeddings.weight"),
        "emb_ln_w": take("embeddings.LayerNorm.weight"),
        "emb_ln_b": take("embeddings.LayerNorm.bias"),
    }
    if prefix + "embeddings.token_type_embeddings.weight" in weights:
        out["types"] = take("embeddings.token_type_embeddings.weight")
    for i in range(layers):
        for short, name in _LAYER.items():
            out[f"{i}.{short}"] = take(f"encoder.layer.{i}.{name}")
    if task is not Task.EMBED:
        out["pooler_w"] = take("pooler.dense.weight")
        out["pooler_b"] = take("pooler.dense.bias")
        for short in ("weight", "bias"):
            if f"classifier.{short}" not in weights:
                raise KeyError(f"weight classifier.{short} is missing")
            out[f"classifier_{short[0]}"] = weights[f"classifier.{short}"]
    return out


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

        w = named_weights(weights, layers=self.layers, task=task)
        self.word, self.position, self.types = w["word"], w["position"], w.get("types")
        self.emb_norm = (w["emb_ln_w"], w["emb_ln_b"])
        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(self.layers):
            b = {name: w[f"{i}.{name}"] for name in _LAYER}
            b["qkv_w"] = torch.cat([b.pop("q_w"), b.pop("k_w"), b.pop("v_w")]).contiguous()
            b["qkv_b"] = torch.cat([b.pop("q_b"), b.pop("k_b"), b.pop("v_b")]).contiguous()
            self.blocks.append(b)
        self.pooler: tuple[torch.Tensor, torch.Tensor] | None = None
        self.classifier: tuple[torch.Tensor, torch.Tensor] | None = None
        if task is not Task.EMBED:
            self.pooler = (w["pooler_w"], w["pooler_b"])
            self.classifier = (w["classifier_w"], w["classifier_b"])
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
