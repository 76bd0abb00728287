"""The ONNX Runtime backend: a prepared artifact on CPU, torch never imported.

The graph already pools (embed) or ends in logits (rerank, classify), so `run` is one session
call. Session options are chosen by measurement on 2-core hosts (benchmarks/onnx_notes.md).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ember.backends.artifact import (
    MODEL_FILE,
    Manifest,
    ensure_artifact,
    verify_model_hash,
)
from ember.backends.base import Batch, Capabilities, FloatArray
from ember.errors import ModelError
from ember.models import ModelSpec, Task
from ember.settings import Settings

log = logging.getLogger("ember.backends.onnx")

_LEVELS = {
    0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ALLOW_SPINNING = False
"""Pool threads sleep between runs instead of spinning: spinning raised process CPU from ~75%
to ~95-120% alongside a busy Python thread, with no latency gain (onnx_notes.md)."""
CPU_MEM_ARENA = True
"""Keep activation memory between runs: without the arena, batches of 2-4k tokens cost 5-25%
more CPU (page faults), for ~100 MB less RSS only until glibc's heap grows back."""
MEM_PATTERN = False
"""Memory patterns are planned and cached per input shape: no steady-state gain measured with
the arena on, a slightly colder first run per shape, and ~10 MB more RSS over the bucket set."""
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
"""ORT fusions that make the graph slower on CPU: SkipLayerNormalization runs 2.9x slower than
the Add + LayerNormalization it replaces (onnx_notes.md). Applies when ember saves an optimised
graph at prepare time and when a session optimises a raw export itself."""


def serving_level(optimize: int) -> int:
    """The ORT level a serving session uses for an artifact prepared at `optimize`: none when
    the saved graph is already optimised, else everything (the raw export must be optimised)."""
    return 0 if optimize > 0 else 99


def session_options(*, threads: int, level: int) -> ort.SessionOptions:
    """Options for a CPU session with `threads` intra-op threads at ORT level `level`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _LEVELS[level]
    options.enable_cpu_mem_arena = CPU_MEM_ARENA
    options.enable_mem_pattern = MEM_PATTERN
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if ALLOW_SPINNING else "0"
    )
    options.add_session_config_entry(
        "session.inter_op.allow_spinning", "1" if ALLOW_SPINNING else "0"
    )
    # ORT warns on stderr about hardware-specific level-99 graphs and the like: ember reports
    # what matters itself.
    options.log_severity_level = 3
    return options


def create_session(
    model: Path, *, threads: int, level: int, save_to: Path | None = None
) -> ort.InferenceSession:
    """A CPU session on `model`; with `save_to`, ORT also writes the optimised graph there."""
    options = session_options(threads=threads, level=level)
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(
        str(model),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


class OnnxBackend:
    """One ONNX Runtime session on a prepared artifact; `run` takes and returns numpy."""

    name = "onnx"

    def __init__(self, *, artifact: Path, manifest: Manifest, threads: int) -> None:
        """Open the artifact's graph, checking its and its weights' bytes against the
        manifest's sha256.

        The hash (≈65 ms for 90 MB) runs on a second thread while ORT builds the session (it
        releases the GIL), so it costs little wall time; a mismatch raises `ModelError` before
        the session is used. ORT maps the weights file rather than reading it.
        """
        self.artifact = artifact
        self.manifest = manifest
        self.threads = threads
        self.level = serving_level(manifest.options.optimize)
        width = manifest.hidden_size if manifest.task is Task.EMBED else len(manifest.labels)
        self.capabilities = Capabilities(
            device="cpu", lengths="exact", warm="cover", output_width=max(width, 1)
        )
        model = artifact / MODEL_FILE
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-hash") as pool:
            hashed = pool.submit(verify_model_hash, artifact, manifest)
            try:
                session = create_session(model, threads=threads, level=self.level)
            except Exception as exc:
                hashed.result()  # a hash mismatch explains the failure better than ORT does
                raise ModelError(f"{model} cannot be loaded by onnxruntime: {exc}") from None
            hashed.result()
        self._session: ort.InferenceSession | None = session
        self._inputs = tuple(str(i.name) for i in session.get_inputs())
        self._output = str(session.get_outputs()[0].name)
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ModelError(f"{model} takes inputs ember cannot feed: {sorted(unknown)}")

    @classmethod
    def for_model(cls, *, spec: ModelSpec, settings: Settings, device: str) -> OnnxBackend:
        """The backend for `spec`: its artifact, found in the cache or prepared now."""
        if device != "cpu":
            log.warning("%s: the onnx backend runs on CPU; ignoring device %s", spec.name, device)
        artifact, manifest = ensure_artifact(spec, settings)
        if spec.onnx_artifact and manifest.options.quantize != settings.quantize:
            log.warning(
                "%s: serving the artifact as prepared (quantize=%s); --quantize %s applies only "
                "when ember prepares a model",
                spec.name,
                manifest.options.quantize,
                settings.quantize,
            )
        if manifest.task is not spec.task:
            raise ModelError(
                f"{artifact} was prepared for {manifest.task.value}, not {spec.task.value}"
            )
        return cls(artifact=artifact, manifest=manifest, threads=settings.intra_op_threads())

    def run(self, batch: Batch) -> FloatArray:
        if self._session is None:
            raise RuntimeError("the onnx backend is closed")
        arrays = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        feeds = {name: arrays[name] for name in self._inputs}
        out = self._session.run([self._output], feeds)[0]
        result: FloatArray = np.asarray(out, dtype=np.float32)
        return result

    def describe(self) -> dict[str, Any]:
        options = self.manifest.options
        return {
            "backend": self.name,
            "device": "cpu",
            "dtype": "int8" if options.quantize == "int8" else "float32",
            "threads": self.threads,
            "quantize": options.quantize,
            "artifact": str(self.artifact),
            "onnxruntime": ort.__version__,
            "session": {
                "prepared_optimization_level": options.optimize,
                "graph_optimization_level": self.level,
                "intra_op_threads": self.threads,
                "inter_op_threads": 1,
                "execution_mode": "sequential",
                "cpu_mem_arena": CPU_MEM_ARENA,
                "mem_pattern": MEM_PATTERN,
                "allow_spinning": ALLOW_SPINNING,
                "disabled_optimizers": list(DISABLED_OPTIMIZERS),
            },
        }

    def close(self) -> None:
        self._session = None
