"""BERT-shaped encoders (BERT, RoBERTa, XLM-RoBERTa, DistilBERT): what makes a checkpoint one, its
weights under one set of short names, and the forward of transformers' `BertModel` (with the
heads of the `*ForSequenceClassification` classes) in plain torch.

The four families are one computation (post-norm transformer, absolute learned positions) with
small differences that are folded into the weights at load time, so that both the torch forward
below and the CuPy backend run them unchanged:
- RoBERTa/XLM-R number positions from `padding_idx + 1` (transformers'
  `create_position_ids_from_input_ids`): the position table is sliced from that row. Right-padded
  batches have no padding before a real token, so row `s` of the slice is position `s` exactly.
- A single token-type row (RoBERTa, XLM-R) is added to the position table once; DistilBERT has
  none. Only BERT-style tables of two or more rows are looked up per token.
- The classification heads are one shape, a dense layer and an activation on the first token,
  then the output projection: BERT's pooler + tanh + classifier, RoBERTa's classifier.dense +
  tanh + out_proj, DistilBERT's pre_classifier + ReLU + classifier.

Why not transformers on the torch path: importing it (with the modules its BERT pulls in:
torch._dynamo, torch.distributed.tensor, scipy) costs several seconds at startup, and its
forward checks the mask on the host (a sync) in eager mode. This forward has no host syncs and
no data-dependent control flow, so every bucket shape can be captured as a CUDA graph, and it
fuses the Q, K and V projections into one matmul.

Anything else returns None from `supported` / `load_bert` and transformers serves it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ember.backends.torch")

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_HEADS = {
    "bert": "BertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "xlm-roberta": "XLMRobertaForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
}
"""The families covered, and the one classification class of each whose head is covered."""
FAMILIES = tuple(_HEADS)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncoderConfig:
    """The shape of a BERT-shaped encoder, whatever its family calls the fields."""

    family: str
    """`model_type`: bert, roberta, xlm-roberta or distilbert."""
    hidden: int
    heads: int
    intermediate: int
    layers: int
    eps: float
    act: str
    """Feed-forward activation, one of ACTIVATIONS."""
    position_offset: int
    """First row of the position table in use (RoBERTa, XLM-R: padding_idx + 1)."""
    head_act: str
    """Activation between the head's two layers: tanh, or relu (DistilBERT)."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def encoder_config(config: Mapping[str, Any]) -> EncoderConfig | None:
    """The encoder shape of a transformers config, or None when it is not one covered here."""
    family = config.get("model_type")
    if family not in _HEADS:
        return None
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return None
    if family == "distilbert":
        return EncoderConfig(
            family=family,
            hidden=int(config.get("dim", 768)),
            heads=int(config.get("n_heads", 12)),
            intermediate=int(config.get("hidden_dim", 3072)),
            layers=int(config.get("n_layers", 6)),
            eps=1e-12,  # fixed in transformers' DistilBERT
            act=str(config.get("activation", "gelu")),
            position_offset=0,
            head_act="relu",
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        return None
    act = str(config.get("hidden_act", "gelu"))
    offset = 0 if family == "bert" else int(config.get("pad_token_id", 1)) + 1
    return EncoderConfig(
        family=family,
        hidden=int(config["hidden_size"]),
        heads=int(config["num_attention_heads"]),
        intermediate=int(config["intermediate_size"]),
        layers=int(config["num_hidden_layers"]),
        eps=float(config.get("layer_norm_eps", 1e-12)),
        act=act,
        position_offset=offset,
        head_act="tanh",
    )


def supported(spec: ModelSpec) -> EncoderConfig | None:
    """The encoder shape when this forward (and the CuPy backend) can run `spec`, else None."""
    try:
        raw: dict[str, Any] = json.loads((spec.path / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    config = encoder_config(raw)
    if config is None or config.act not in ACTIVATIONS:
        return None
    if spec.task is not Task.EMBED:
        architectures = raw.get("architectures") or []
        if not architectures or architectures[0] != _HEADS[config.family]:
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

_DISTILBERT_LAYER = {
    "q_w": "attention.q_lin.weight",
    "q_b": "attention.q_lin.bias",
    "k_w": "attention.k_lin.weight",
    "k_b": "attention.k_lin.bias",
    "v_w": "attention.v_lin.weight",
    "v_b": "attention.v_lin.bias",
    "out_w": "attention.out_lin.weight",
    "out_b": "attention.out_lin.bias",
    "ln1_w": "sa_layer_norm.weight",
    "ln1_b": "sa_layer_norm.bias",
    "up_w": "ffn.lin1.weight",
    "up_b": "ffn.lin1.bias",
    "down_w": "ffn.lin2.weight",
    "down_b": "ffn.lin2.bias",
    "ln2_w": "output_layer_norm.weight",
    "ln2_b": "output_layer_norm.bias",
}
"""The same layer in DistilBERT, under `transformer.layer.N.`."""

LAYER_WEIGHTS = tuple(_LAYER)

_HEAD_WEIGHTS = {
    "bert": ("{p}pooler.dense", "classifier"),
    "roberta": ("classifier.dense", "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "classifier"),
}
"""Per family: the head's dense layer and its output projection (`{p}`: the encoder prefix)."""


def named_weights(
    weights: Mapping[str, Any], *, config: EncoderConfig, task: Task
) -> dict[str, Any]:
    """The checkpoint's tensors (any array type: torch, numpy) under short names, with the
    family's differences folded in (module docstring): `word`, `position` (from the first row in
    use), `types` (only with two or more rows), `emb_ln_w/b`, `N.<layer name>` for each layer,
    and for rerank/classify `pooler_w/b` (the head's dense layer) and `classifier_w/b` (its output
    projection). KeyError names a missing weight."""
    family = config.family
    base = "distilbert" if family == "distilbert" else family.replace("xlm-", "")
    prefix = f"{base}." if any(k.startswith(f"{base}.") for k in weights) else ""

    def take(name: str) -> Any:
        if name not in weights:
            raise KeyError(f"weight {name} is missing")
        return weights[name]

    emb = f"{prefix}embeddings."
    position = take(f"{emb}position_embeddings.weight")[config.position_offset :]
    out = {
        "word": take(f"{emb}word_embeddings.weight"),
        "emb_ln_w": take(f"{emb}LayerNorm.weight"),
        "emb_ln_b": take(f"{emb}LayerNorm.bias"),
    }
    types = weights.get(f"{emb}token_type_embeddings.weight")
    if types is not None and len(types) == 1:
        position = position + types[0]  # every token has type 0: one add at load time
    elif types is not None:
        out["types"] = types
    out["position"] = position
    if family == "distilbert":
        layer, names = f"{prefix}transformer.layer.", _DISTILBERT_LAYER
    else:
        layer, names = f"{prefix}encoder.layer.", _LAYER
    for i in range(config.layers):
        for short, name in names.items():
            out[f"{i}.{short}"] = take(f"{layer}{i}.{name}")
    if task is not Task.EMBED:
        dense, projection = (n.format(p=prefix) for n in _HEAD_WEIGHTS[family])
        for short, name in (("pooler", dense), ("classifier", projection)):
            out[f"{short}_w"] = take(f"{name}.weight")
            out[f"{short}_b"] = take(f"{name}.bias")
    return out


class BertEncoder:
    """`forward(ids, mask, type_ids)` → last hidden state (rows, seq, hidden); `head(hidden)` →
    logits for sequence classification. Weights live on one device in one dtype."""

    def __init__(
        self, *, config: EncoderConfig, weights: Mapping[str, torch.Tensor], task: Task
    ) -> None:
        import torch
        from torch.nn import functional as F

        self.hidden = config.hidden
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.eps = config.eps
        self.layers = config.layers
        self.task = task
        self._act = _torch_activation(config.act)
        self._head_act = torch.tanh if config.head_act == "tanh" else F.relu

        w = named_weights(weights, config=config, task=task)
        self.word, self.position, self.types = w["word"], w["position"], w.get("types")
        self.emb_norm = (w["emb_ln_w"], w["emb_ln_b"])
        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(self.layers):
            b = {name: w[f"{i}.{name}"] for name in LAYER_WEIGHTS}
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
        """Sequence-classification logits from the first token (dense → act → projection)."""
        assert self.pooler is not None and self.classifier is not None
        from torch.nn import functional as F

        pooled = self._head_act(F.linear(hidden[:, 0], *self.pooler))
        logits: torch.Tensor = F.linear(pooled, *self.classifier)
        return logits


def _torch_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torch.nn import functional as F

    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    return lambda x: F.gelu(x, approximate="tanh")


def load_bert(spec: ModelSpec, *, device: str, dtype: torch.dtype) -> BertEncoder | None:
    """The encoder for `spec` on `device` in `dtype`, or None when it is not BERT-shaped."""
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
        log.info(
            "%s: not loadable as a BERT-shaped encoder (%s); using transformers", spec.name, exc
        )
        return None
