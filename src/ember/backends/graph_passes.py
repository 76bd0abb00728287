"""Graph passes of `ember prepare` on an exported ONNX file: ORT's transformer fusions, int8
quantisation, ORT's graph optimisations saved once, and moving the weights to external data.

onnx and onnxruntime's Python tools are imported inside these functions, never at module level.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ember.errors import ModelError
from ember.manifest import DATA_FILE
from ember.models import ModelSpec

log = logging.getLogger("ember.backends.artifact")

DATA_ALIGNMENT = 4096
"""Each external tensor starts at a page boundary, so a mapped tensor shares no page."""
DATA_MIN_BYTES = 1024
"""Initializers smaller than this stay inside the graph file (shapes, scalars)."""
# Model types whose encoder ORT's "bert" fusions recognise (attention, embed+layernorm, gelu).
_BERT_LIKE = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "ernie"}
)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and optimiser's deprecation and tracer chatter (none is actionable
    by a user); log it at debug instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        log.debug("prepare: %s: %s", item.category.__name__, item.message)


def fuse(spec: ModelSpec, source: Path, dest: Path) -> bool:
    """ORT's transformer fusions (Attention, EmbedLayerNorm, BiasGelu) for BERT-like encoders;
    False (keep the plain graph) for other architectures or on failure.

    Not SkipLayerNorm: ORT 1.32's CPU SkipLayerNormalization kernel takes 1.45 ms on 32x48x384
    where Add + Add + LayerNormalization take 0.5 ms, which made it 28 % of the int8 graph's
    time (onnx_notes.md). ORT's own SkipLayerNormFusion is disabled too (`create_session`).
    """
    if spec.model_type not in _BERT_LIKE:
        log.info("prepare: no transformer fusions for model type %r", spec.model_type)
        return False
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((spec.path / "config.json").read_text(encoding="utf-8"))
    heads = int(config.get("num_attention_heads", config.get("n_heads", 0)) or 0)
    hidden = int(config.get("hidden_size", config.get("dim", 0)) or 0)
    fusions = FusionOptions("bert")
    fusions.enable_skip_layer_norm = False
    fusions.enable_bias_skip_layer_norm = False
    try:
        with quiet(), ort_logs_quiet():
            model = optimize_model(
                str(source),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                opt_level=0,
                optimization_options=fusions,
            )
            model.save_model_to_file(str(dest))
    except Exception as exc:
        log.warning("prepare: transformer fusions failed (%s); keeping the plain graph", exc)
        return False
    return True


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def ort_logs_quiet() -> Iterator[None]:
    """Keep ORT's Python tools' log lines out of the CLI display while they run.

    They log to "onnxruntime.*" loggers and, for the quantiser's pre-processing hint, to the
    root logger directly, which also calls `basicConfig` when root has no handler; a NullHandler
    prevents that and a filter on root (it sees only records logged on root itself, not those
    propagated from ember's loggers) drops the hint.
    """
    logger = logging.getLogger("onnxruntime")
    root = logging.getLogger()
    level, drop, null = logger.level, _DropRecords(), logging.NullHandler()
    logger.setLevel(logging.ERROR)
    root.addFilter(drop)
    root.addHandler(null)
    try:
        yield
    finally:
        logger.setLevel(level)
        root.removeFilter(drop)
        root.removeHandler(null)


def quantize(source: Path, dest: Path) -> None:
    """Dynamic int8: s8 weights per output channel, u8 activations quantised at run time.

    Per channel because per-tensor weights lose too much on MiniLM (median cosine to fp32 0.93
    vs 0.99 over the parity corpus, onnx_notes.md). MatMul and fused Attention only: the
    embedding Gather is a lookup, quantising it saves memory, not time.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(), ort_logs_quiet():
        try:
            quantize_dynamic(
                str(source),
                str(dest),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                # ORT's shape inference cannot type the outputs of fused contrib ops; they are
                # all float here. (Its "pre-processing" fixes that too, at 5 s more.)
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise ModelError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


def save_optimized(source: Path, dest: Path, level: int) -> None:
    """Apply ORT's graph optimisations once and save the result, so serving starts need not."""
    if level == 0:
        source.replace(dest)  # moved, not copied: no third copy on disk
        return
    from ember.backends.ort_session import create_session

    create_session(source, threads=1, level=level, save_to=dest)


def externalize(source: Path, dest: Path, *, consume: bool = False) -> None:
    """Save the graph `source` as `dest` plus `DATA_FILE` beside it, each initializer of
    `DATA_MIN_BYTES` or more at a `DATA_ALIGNMENT` boundary of the data file. With `consume`,
    `source`'s folder is deleted once the graph is in memory, before anything is written."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(source))
    if consume:
        shutil.rmtree(source.parent)
    offset = 0
    with (dest.parent / DATA_FILE).open("wb") as data:
        for tensor in model.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < DATA_MIN_BYTES:
                continue
            offset += data.write(bytes(-offset % DATA_ALIGNMENT))
            set_external_data(tensor, location=DATA_FILE, offset=offset, length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += data.write(raw)
    onnx.save_model(model, str(dest))
