"""Graph passes of `ember prepare` on an exported ONNX file: ORT's transformer fusions, int8
quantisation, ORT's graph optimisations saved once, and moving the weights to external data.

onnx and onnxruntime's Python tools are imported inside these functions, never at module level.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ember.errors import ModelError
from ember.manifest import DATA_FILE, Fusion
from ember.models import ModelSpec

log = logging.getLogger("ember.backends.artifact")

DATA_ALIGNMENT = 4096
"""Each external tensor starts at a page boundary, so a mapped tensor shares no page."""
DATA_MIN_BYTES = 1024
"""Initializers smaller than this stay inside the graph file (shapes, scalars)."""
_COPY_CHUNK = 16 << 20
"""Bytes per read when copying external weights from file to file."""
ORT_MODEL_TYPES = {
    # ORT's "bert" fusions (Attention, EmbedLayerNorm, BiasGelu) recognise these encoders.
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "ernie"),
        "bert",
    ),
    # No ORT model type of their own; the "bert" optimiser's generic fusions still apply (on
    # tiny models: Gelu x2 for ModernBERT, BiasGelu x2 for DeBERTa-v2; attention does not match),
    # and verification against torch guards the result.
    "modernbert": "bert",
    "deberta-v2": "bert",
    # ORT 1.32 has a "qwen3" optimiser (GPT-2 style); on ember's TorchScript export it matched
    # nothing on a tiny Qwen3 (nor did "bert" or "gpt2", nor any of them on Qwen2, which has no
    # type): recorded as not fused, so that a newer ORT that matches shows up in the manifest.
    "qwen3": "qwen3",
}
"""transformers model type → the ORT optimiser model type whose fusions apply to it."""
_CONTRIB = "com.microsoft"
"""The domain of ORT's fused operators (Attention, BiasGelu, SimplifiedLayerNormalization...)."""


def release_memory() -> None:
    """Hand freed heap back to the system between passes (glibc keeps it otherwise: after the
    export of a 0.56 GB model RSS stayed 2.3 GB above what was live), so that each pass's peak
    starts from what is live, not from the previous pass's peak."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and optimiser's deprecation and tracer chatter (none is actionable
    by a user); log it at debug instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        log.debug("prepare: %s: %s", item.category.__name__, item.message)


def fuse(spec: ModelSpec, source: Path, dest: Path) -> Fusion:
    """ORT's transformer fusions for the families ORT has an optimiser for, written to `dest`
    when any applied. Never raises: a failure is recorded in the returned `Fusion` (and logged)
    and the plain graph is kept.

    Not SkipLayerNorm: ORT 1.32's CPU SkipLayerNormalization kernel takes 1.45 ms on 32x48x384
    where Add + Add + LayerNormalization take 0.5 ms, which made it 28 % of the int8 graph's
    time (onnx_notes.md). ORT's own SkipLayerNormFusion is disabled too (`create_session`).
    """
    ort_type = ORT_MODEL_TYPES.get(spec.model_type)
    if ort_type is None:
        log.info("prepare: no transformer fusions for model type %r", spec.model_type)
        return Fusion(fused=False)
    try:
        ops = _run_fusions(spec, ort_type, source, dest)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".strip()[:500]
        log.warning("prepare: transformer fusions failed (%s); keeping the plain graph", error)
        dest.unlink(missing_ok=True)
        return Fusion(fused=False, model_type=ort_type, error=error)
    if not ops:
        dest.unlink(missing_ok=True)
    return Fusion(fused=bool(ops), model_type=ort_type, ops=ops)


def _run_fusions(spec: ModelSpec, ort_type: str, source: Path, dest: Path) -> dict[str, int]:
    """Run ORT's optimiser for `ort_type` at level 0 (fusions only); save to `dest` if it
    created any fused operator, and return how many of each it created (operators the export
    already had, such as opset 17's LayerNormalization, are not counted)."""
    from collections import Counter

    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # Without its weights: the optimiser reads the few values its fusions need from the files
    # (onnx reads an external tensor's bytes on access, relative to the working folder) and
    # copies the whole model for shape inference; with the weights loaded it peaked at 6.2x
    # the weights of a 2.26 GB BERT.
    proto = onnx.load(str(source), load_external_data=False)
    before = Counter(n.op_type for n in proto.graph.node if n.domain == _CONTRIB)
    config = json.loads((spec.path / "config.json").read_text(encoding="utf-8"))
    heads = int(config.get("num_attention_heads", config.get("n_heads", 0)) or 0)
    hidden = int(config.get("hidden_size", config.get("dim", 0)) or 0)
    fusions = FusionOptions(ort_type)
    fusions.enable_skip_layer_norm = False
    fusions.enable_bias_skip_layer_norm = False
    with quiet(), ort_logs_quiet(), _working_folder(source.parent):
        model = optimize_model(
            proto,
            model_type=ort_type,
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,
            optimization_options=fusions,
        )
        after = Counter(n.op_type for n in model.model.graph.node if n.domain == _CONTRIB)
        ops = {op: n - before[op] for op, n in after.items() if n > before[op]}
    if ops:
        # What `save_model_to_file` does first (the fused operators' domain, node order).
        model.topological_sort()
        if not any(opset.domain == _CONTRIB for opset in model.model.opset_import):
            model.model.opset_import.add(domain=_CONTRIB, version=1)
        # The weights it left untouched are copied file to file; what it made (packed QKV)
        # is written from memory. External data always: one path for every size.
        save_external(model.model, source.parent, dest)
    return ops


_CHDIR = threading.Lock()


@contextmanager
def _working_folder(folder: Path) -> Iterator[None]:
    """Run with `folder` as the working folder (onnx resolves external data only relative to
    it, and refuses absolute or `..` locations). Process-wide: ember's own paths are absolute
    (`models.resolve_path`, `artifact.cache_path`); one fusion at a time."""
    with _CHDIR:
        previous = os.getcwd()
        os.chdir(folder.resolve())
        try:
            yield
        finally:
            os.chdir(previous)


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
                # External data always: one path for every size. The quantiser writes Constant
                # values there too, which `externalize` carries over (`graph_tensors`).
                use_external_data_format=True,
                # ORT's shape inference cannot type the outputs of fused contrib ops; they are
                # all float here. (Its "pre-processing" fixes that too, at 5 s more.)
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise ModelError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc


def save_optimized(source: Path, dest: Path, level: int) -> None:
    """Apply ORT's graph optimisations once and save the result, so serving starts need not."""
    if level == 0:
        # Moved, not copied (no third copy on disk): the graph and the external data beside it
        # (a pass's folder holds one graph).
        for file in source.parent.iterdir():
            file.replace(dest.parent / (dest.name if file == source else file.name))
        return
    from ember.backends.ort_session import create_session

    create_session(source, threads=1, level=level, save_to=dest)


def externalize(source: Path, dest: Path, *, consume: bool = False) -> None:
    """Save the graph `source` as `dest` plus `DATA_FILE` beside it, each initializer of
    `DATA_MIN_BYTES` or more at a `DATA_ALIGNMENT` boundary of the data file. With `consume`,
    `source`'s folder is deleted once written.

    The graph is read without its external data, and external weights are copied file to file
    in chunks: a 2.26 GB model's weights never sit in memory here (onnx would hold them all,
    and protobuf's `raw_data` copies each one again on access)."""
    import onnx

    save_external(onnx.load(str(source), load_external_data=False), source.parent, dest)
    if consume:
        shutil.rmtree(source.parent)


def save_external(model: Any, folder: Path, dest: Path) -> None:
    """`externalize`'s writing: the graph `model`, whose external tensors are files in `folder`
    (another folder than `dest`'s), saved as `dest` plus `DATA_FILE` beside it."""
    import onnx

    offset = 0
    with (dest.parent / DATA_FILE).open("wb") as data:
        for tensor in graph_tensors(model.graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location, start, length = _external_ref(tensor, folder)
                if length < DATA_MIN_BYTES:  # small: back inside the graph
                    with location.open("rb") as fh:
                        fh.seek(start)
                        tensor.raw_data = fh.read(length)
                    del tensor.external_data[:]
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    continue
                offset += data.write(bytes(-offset % DATA_ALIGNMENT))
                _copy_range(location, start, length, data)
            else:
                raw = tensor.raw_data
                if len(raw) < DATA_MIN_BYTES:
                    continue
                length = len(raw)
                offset += data.write(bytes(-offset % DATA_ALIGNMENT))
                data.write(raw)
                del raw
                tensor.ClearField("raw_data")
            point_to(tensor, offset=offset, length=length)
            offset += length
    onnx.save_model(model, str(dest))


def graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: its initializers and the tensors in node attributes
    (Constant's `value`), subgraphs included. ORT's quantiser writes Constant values as
    external data too; left out, the int8 raw export's position ids (a Constant) pointed into
    the new data file at another tensor's bytes, and came back as garbage."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from graph_tensors(sub)


def _external_ref(tensor: Any, folder: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor, its file relative to `folder`."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = folder / info["location"]
    start = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else location.stat().st_size - start
    return location, start, length


def _copy_range(source: Path, start: int, length: int, out: BinaryIO) -> None:
    with source.open("rb") as fh:
        fh.seek(start)
        left = length
        while left:
            chunk = fh.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise ModelError(f"{source} ends before the tensor it holds at {start}+{length}")
            out.write(chunk)
            left -= len(chunk)


def point_to(tensor: Any, *, offset: int, length: int, location: str = DATA_FILE) -> None:
    """Make `tensor` refer to `length` bytes at `offset` of `location` (a file beside the
    graph; `DATA_FILE` unless said)."""
    import onnx

    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
