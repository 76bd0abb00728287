"""The ONNX graph of a BERT-shaped encoder (BERT, RoBERTa, XLM-R, DistilBERT) written straight from
its safetensors weights with onnx's helper API and numpy: no torch, no transformers.

The graph has the torch export's interface (`export.py`): int64 inputs `input_ids`,
`attention_mask` and, when the model has a token-type table of two or more rows,
`token_type_ids`, each (batch, sequence); a float32 output, `embeddings` (batch, hidden:
pooled, not normalised) then `last_hidden_state` (batch, sequence, hidden), or `logits`
(batch, labels). Its nodes are the patterns ORT's "bert"
transformer optimizer fuses, in the torch export's order: embeddings as Gather + Add + Add +
LayerNormalization with positions from a sliced constant (→ EmbedLayerNormalization),
attention as the classic MatMul/Add/Reshape/Transpose chain with an additive
`(1 - mask) * min` mask (→ Attention), the erf GELU (→ Gelu, then BiasGelu) or the tanh one (→
FastGelu), and residual Add + LayerNormalization (SkipLayerNorm stays unfused on purpose,
`graph_passes.fuse`). `ember prepare` writes the fused form directly (`fused=True`: what the
optimizer makes of the plain form, same operators and outputs, checked in test_onnx_graph), so a
first start needs neither the optimizer nor its sympy import; the plain form is for
`--optimize 0` and for that check.

Measured (all-MiniLM-L6-v2, 2-core VM with load 4-5 from other sessions, `ember serve` with an
empty --cache-dir, spawn to first /ready 200): 4.4-5.1 s of the server's CPU, 7-10 s wall
(the torch export: 17 s CPU, with torch's bytecode cached); prepare alone ~3 s CPU.

The family differences are folded into the weights by `bert.named_weights` (positions start at
the first row in use, a one-row token-type table is added to them), so positions are always
0..sequence-1: right padding, as ember's batches are. Importing this module imports neither onnx
nor numpy; `build_graph` does.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ember.backends.bert import EncoderConfig, named_weights, supported
from ember.backends.graph_passes import DATA_ALIGNMENT, DATA_MIN_BYTES, point_to
from ember.backends.mapped_weights import open_weights, write_rows
from ember.manifest import DATA_FILE, TOKEN_OUTPUT
from ember.models import ModelSpec, Task

log = logging.getLogger("ember.backends.artifact")

BUILDER = "ember.onnx_graph"
"""What the manifest records as the graph's builder (the torch path records `torch.onnx`)."""
POOLINGS = ("cls", "mean", "lasttoken")
"""Pooling modes written into the graph; any other falls back to the torch export."""
_MS = "com.microsoft"
"""The domain of ORT's contrib ops (the fused operators)."""
_CONTRIB = frozenset({"EmbedLayerNormalization", "Attention", "BiasGelu", "FastGelu"})
_EXTERNAL_BYTES = 1 << 30
"""Above this much weight data the graph is saved with external data (protobuf's 2 GB limit)."""


def covers(spec: ModelSpec) -> EncoderConfig | None:
    """The encoder shape when `build_graph` can write `spec`'s graph, else None (torch export)."""
    if spec.task is Task.EMBED and spec.pooling not in POOLINGS:
        return None
    if spec.dense:  # Dense modules after pooling: the torch export writes them into the graph
        return None
    return supported(spec)


@dataclass(frozen=True, kw_only=True)
class BuiltGraph:
    """What `build_graph` wrote."""

    inputs: list[str]
    """The graph's input names, in order."""
    fused_ops: dict[str, int]
    """ORT contrib operators written (e.g. Attention: 6), as the manifest's fusion record
    counts them; empty for the unfused form."""


def build_graph(
    spec: ModelSpec, config: EncoderConfig, *, path: Path, opset: int, fused: bool = False
) -> BuiltGraph:
    """Write `spec`'s graph to `path` (weights inside it, or beside it when large). Raises
    KeyError naming a missing weight, ValueError for an unreadable dtype.

    With `fused`, the graph is written as ORT's transformer optimizer leaves the unfused one
    (EmbedLayerNormalization, Attention with packed QKV weights, BiasGelu/FastGelu; tests check
    the two agree): a first start then skips the optimizer, its sympy import and its shape
    inference, about 3 s of CPU on all-MiniLM-L6-v2."""
    import onnx

    weights_file = spec.path / "model.safetensors"
    with open_weights(weights_file) as (tensors, nbytes, release):
        weights = named_weights(tensors, config=config, task=spec.task)
        with ExitStack() as stack:
            data = None
            if nbytes > _EXTERNAL_BYTES:  # streamed to the data file as each one is written
                data = stack.enter_context((path.parent / DATA_FILE).open("wb"))
            graph = _Graph(weights, fused=fused, data=data, release=release)
            model = graph.model
            model.ir_version = onnx.IR_VERSION
            model.producer_name = BUILDER
            model.opset_import.add(domain="", version=opset)
            if fused:
                model.opset_import.add(domain=_MS, version=1)
            graph.encoder(config, spec=spec)
    onnx.save_model(model, str(path))
    ops = Counter(node.op_type for node in model.graph.node if node.domain == _MS)
    return BuiltGraph(inputs=graph.inputs, fused_ops=dict(ops))


class _Graph:
    """One model's graph, its nodes and initializers written in place (onnx.helper's
    make_graph/make_model copy every initializer twice: about 1 s for 90 MB)."""

    def __init__(
        self,
        weights: dict[str, Any],
        *,
        fused: bool,
        data: BinaryIO | None,
        release: Callable[[], None],
    ) -> None:
        import onnx

        self.weights = weights
        self.fused = fused
        self.model = onnx.ModelProto()
        self.inputs: list[str] = []
        self._data = data
        self._release = release
        self._count = 0

    def const(self, value: Any, *, dtype: Any = None, name: str = "") -> str:
        """An initializer holding `value` (float32 unless `dtype`); returns its name. With a
        data file, one of `DATA_MIN_BYTES` or more is written there at once, at a
        `DATA_ALIGNMENT` boundary (the artifact's layout, `graph_passes.externalize`)."""
        import numpy as np
        import onnx

        array = np.asarray(value, dtype=dtype or np.float32)
        name = name or self._name("const")
        tensor = self.model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        if self._data is None or array.nbytes < DATA_MIN_BYTES:
            # No copy here: tobytes makes the one C-order copy (of a transposed view too).
            tensor.raw_data = array.tobytes(order="C")
            return name
        offset = self._data.tell()
        offset += self._data.write(bytes(-offset % DATA_ALIGNMENT))
        write_rows(self._data, array, self._release)
        point_to(tensor, offset=offset, length=array.nbytes)
        return name

    def ints(self, *values: int) -> str:
        import numpy as np

        return self.const(list(values), dtype=np.int64)

    def weight(self, short: str, *, transpose: bool = False) -> str:
        """The checkpoint tensor `short` (named_weights' name) as float32, (in, out) for MatMul."""
        import numpy as np

        array = np.asarray(self.weights[short], dtype=np.float32)
        return self.const(array.T if transpose else array, name=short)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> str:
        """A node (a contrib op in ORT's domain for the fused ones); returns its first output."""
        import onnx

        out = self._name(op_type)
        names = [out] + [f"{out}:{i}" for i in range(1, outputs)]
        domain = _MS if op_type in _CONTRIB else ""
        node = onnx.helper.make_node(op_type, list(inputs), names, out, domain=domain, **attrs)
        self.model.graph.node.append(node)
        return out

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"/{prefix}_{self._count}"

    def linear(self, x: str, prefix: str) -> str:
        """MatMul then Add(bias, ·): the order the torch export writes and ORT matches."""
        y = self.op("MatMul", x, self.weight(f"{prefix}_w", transpose=True))
        return self.op("Add", self.weight(f"{prefix}_b"), y)

    # --- the encoder ----------------------------------------------------------------------

    def encoder(self, config: EncoderConfig, *, spec: ModelSpec) -> None:
        import onnx

        ids, mask = "input_ids", "attention_mask"
        self.inputs = [ids, mask] + (["token_type_ids"] if "types" in self.weights else [])
        if self.fused:
            x, scores_mask = self.fused_embeddings(config, ids, mask)
        else:
            x, scores_mask = self.embeddings(config, ids), self.additive_mask(mask)
        for i in range(config.layers):
            x = self.layer(config, x, scores_mask, i)
        embed = spec.task is Task.EMBED
        output = "embeddings" if embed else "logits"
        y = self.pool(x, mask, spec.pooling, config.hidden) if embed else self.head(config, x)
        graph = self.model.graph
        graph.name = "ember_encoder"
        graph.node.append(onnx.helper.make_node("Identity", [y], [output], "/output"))
        dims = ["batch", "sequence"]
        graph.input.extend(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, dims)
            for name in self.inputs
        )
        width = config.hidden if embed else len(self.weights["classifier_b"])
        graph.output.append(
            onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["batch", width])
        )
        if embed:  # the unpooled hidden state too (/embed_all); ORT runs only what is fetched
            graph.node.append(onnx.helper.make_node("Identity", [x], [TOKEN_OUTPUT], "/tokens"))
            graph.output.append(
                onnx.helper.make_tensor_value_info(
                    TOKEN_OUTPUT, onnx.TensorProto.FLOAT, [*dims, config.hidden]
                )
            )

    def fused_embeddings(self, config: EncoderConfig, ids: str, mask: str) -> tuple[str, str]:
        """EmbedLayerNormalization on int32 ids, as ORT's fusion writes it; returns the
        embeddings and the mask index every Attention reads."""
        import onnx

        int32 = onnx.TensorProto.INT32
        types = "types" in self.weights
        out = self.op(
            "EmbedLayerNormalization",
            self.op("Cast", ids, to=int32),
            self.op("Cast", "token_type_ids", to=int32) if types else "",
            self.weight("word"),
            self.weight("position"),
            self.weight("types") if types else "",
            self.weight("emb_ln_w"),
            self.weight("emb_ln_b"),
            self.op("Cast", mask, to=int32),
            outputs=2,
            epsilon=config.eps,
        )
        return out, f"{out}:1"

    def embeddings(self, config: EncoderConfig, ids: str) -> str:
        """word (+ type) + position, then LayerNorm; positions are Gather(table, Slice(arange))
        with the end from Shape(input_ids)[1], the pattern of BERT's export."""
        import numpy as np

        x = self.op("Gather", self.weight("word"), ids)
        if "types" in self.weights:
            x = self.op("Add", x, self.op("Gather", self.weight("types"), "token_type_ids"))
        rows = len(self.weights["position"])
        positions = self.const(np.arange(rows, dtype=np.int64)[None, :], dtype=np.int64)
        seq = self.op("Gather", self.op("Shape", ids), self.const(1, dtype=np.int64), axis=0)
        end = self.op("Unsqueeze", seq, self.ints(0))
        sliced = self.op("Slice", positions, self.ints(0), end, self.ints(1), self.ints(1))
        x = self.op("Add", x, self.op("Gather", self.weight("position"), sliced))
        return self.op(
            "LayerNormalization",
            x,
            self.weight("emb_ln_w"),
            self.weight("emb_ln_b"),
            axis=-1,
            epsilon=config.eps,
        )

    def additive_mask(self, mask: str) -> str:
        """(batch, 1, 1, seq): 0 where attended, float32 min where padded (transformers 4.x)."""
        import numpy as np
        import onnx

        m = self.op("Unsqueeze", self.op("Unsqueeze", mask, self.ints(1)), self.ints(2))
        m = self.op("Cast", m, to=onnx.TensorProto.FLOAT)
        return self.op(
            "Mul", self.op("Sub", self.const(1.0), m), self.const(np.finfo(np.float32).min)
        )

    def layer(self, config: EncoderConfig, x: str, mask: str, i: int) -> str:
        if self.fused:
            context = self.fused_attention(config, x, mask, i)
        else:
            context = self.attention(config, x, mask, i)
        x = self.norm(self.op("Add", self.linear(context, f"{i}.out"), x), f"{i}.ln1", config)
        up = self.up(x, f"{i}.up", config.act)
        return self.norm(self.op("Add", self.linear(up, f"{i}.down"), x), f"{i}.ln2", config)

    def fused_attention(self, config: EncoderConfig, x: str, mask_index: str, i: int) -> str:
        """ORT's Attention: Q, K and V weights packed (hidden, 3 * hidden), as its fusion packs."""
        import numpy as np

        w = [np.asarray(self.weights[f"{i}.{n}_w"], dtype=np.float32).T for n in "qkv"]
        b = [np.asarray(self.weights[f"{i}.{n}_b"], dtype=np.float32) for n in "qkv"]
        qkv_w = self.const(np.concatenate(w, axis=1), name=f"{i}.qkv_w")
        qkv_b = self.const(np.concatenate(b), name=f"{i}.qkv_b")
        return self.op(
            "Attention",
            x,
            qkv_w,
            qkv_b,
            mask_index,
            num_heads=config.heads,
            mask_filter_value=float(np.finfo(np.float32).min),
        )

    def attention(self, config: EncoderConfig, x: str, mask: str, i: int) -> str:
        heads, size = config.heads, config.head_dim
        split = self.ints(0, 0, heads, size)

        def project(name: str, perm: list[int]) -> str:
            y = self.linear(x, f"{i}.{name}")
            return self.op("Transpose", self.op("Reshape", y, split), perm=perm)

        q = project("q", [0, 2, 1, 3])
        k = project("k", [0, 2, 3, 1])
        v = project("v", [0, 2, 1, 3])
        # Div, not Mul by 1/sqrt: ORT's mask rule finds the mask's Mul among Add's parents by
        # type, and a scaling Mul there would be taken for it.
        scores = self.op("Div", self.op("MatMul", q, k), self.const(size**0.5))
        probs = self.op("Softmax", self.op("Add", scores, mask), axis=-1)
        context = self.op("Transpose", self.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        return self.op("Reshape", context, self.ints(0, 0, config.hidden))

    def up(self, x: str, prefix: str, act: str) -> str:
        """The feed-forward up projection and its activation (BiasGelu/FastGelu when fused)."""
        if self.fused and act != "relu":
            y = self.op("MatMul", x, self.weight(f"{prefix}_w", transpose=True))
            fused = "BiasGelu" if act == "gelu" else "FastGelu"
            return self.op(fused, y, self.weight(f"{prefix}_b"))
        return self.activation(self.linear(x, prefix), act)

    def norm(self, x: str, prefix: str, config: EncoderConfig) -> str:
        w, b = self.weight(f"{prefix}_w"), self.weight(f"{prefix}_b")
        return self.op("LayerNormalization", x, w, b, axis=-1, epsilon=config.eps)

    def activation(self, x: str, name: str) -> str:
        if name == "relu":
            return self.op("Relu", x)
        if name == "gelu":  # exact: x * (1 + erf(x / sqrt 2)) * 0.5
            erf = self.op("Erf", self.op("Div", x, self.const(2.0**0.5)))
            return self.op(
                "Mul", self.op("Mul", x, self.op("Add", erf, self.const(1.0))), self.const(0.5)
            )
        # tanh approximation, in the form of ORT's FastGelu rule (fusion_fastgelu.fuse_1)
        cube = self.op("Mul", self.op("Pow", x, self.const(3.0)), self.const(0.044715))
        scale = self.const((2.0 / math.pi) ** 0.5)
        inner = self.op("Mul", self.op("Add", x, cube), scale)
        one_plus = self.op("Add", self.op("Tanh", inner), self.const(1.0))
        return self.op("Mul", self.op("Mul", x, self.const(0.5)), one_plus)

    # --- outputs --------------------------------------------------------------------------

    def pool(self, x: str, mask: str, method: str, hidden: int) -> str:
        """Sentence-transformers' pooling over the real tokens (`torch_backend.pool`)."""
        import numpy as np
        import onnx

        if method == "cls":
            return self.op("Gather", x, self.const(0, dtype=np.int64), axis=1)
        if method == "lasttoken":
            last = self.op("Sub", self.op("ReduceSum", mask, self.ints(1)), self.ints(1))
            index = self.op("Unsqueeze", last, self.ints(2))  # (batch, 1, 1)
            index = self.op("Expand", index, self.ints(1, 1, hidden))
            return self.op("Squeeze", self.op("GatherElements", x, index, axis=1), self.ints(1))
        m = self.op("Cast", self.op("Unsqueeze", mask, self.ints(-1)), to=onnx.TensorProto.FLOAT)
        summed = self.op("ReduceSum", self.op("Mul", x, m), self.ints(1), keepdims=0)
        counts = self.op("ReduceSum", m, self.ints(1), keepdims=0)
        return self.op("Div", summed, self.op("Clip", counts, self.const(1e-9)))

    def head(self, config: EncoderConfig, x: str) -> str:
        """Sequence-classification logits from the first token: dense → tanh/relu → projection."""
        import numpy as np

        first = self.op("Gather", x, self.const(0, dtype=np.int64), axis=1)
        pooled = self.linear(first, "pooler")
        pooled = self.op("Tanh" if config.head_act == "tanh" else "Relu", pooled)
        return self.linear(pooled, "classifier")
