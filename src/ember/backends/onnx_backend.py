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

from ember.backends.artifact import ensure_artifact
from ember.backends.base import Batch, Capabilities, FloatArray
from ember.backends.ort_session import (
    ALLOW_SPINNING,
    CPU_MEM_ARENA,
    DISABLED_OPTIMIZERS,
    MEM_PATTERN,
    create_session,
    serving_level,
    session_options,
)
from ember.errors import ModelError
from ember.manifest import MODEL_FILE, TOKEN_OUTPUT, Manifest, verify_model_hash
from ember.models import ModelSpec, Task
from ember.settings import Settings
from ember.st_modules import SPLADE_POOLINGS

log = logging.getLogger("ember.backends.onnx")

# Session options live in `ort_session` (prepare uses them too); named here for older callers.
__all__ = ["DISABLED_OPTIMIZERS", "OnnxBackend", "create_session", "session_options"]


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
        outputs = session.get_outputs()
        output = outputs[0]
        self._output = str(output.name)
        # Declared from the graph itself: an embedding graph without the per-token output
        # serves everything else, and /embed_all answers 424 naming what is missing.
        recorded = manifest.spec
        tokens = recorded.task is Task.EMBED and any(o.name == TOKEN_OUTPUT for o in outputs)
        if recorded.task is Task.EMBED and not tokens and recorded.pooling not in SPLADE_POOLINGS:
            log.warning(
                "%s has no %s output: /embed_all answers 424 until the model is prepared "
                "again (`ember prepare --force`)",
                artifact,
                TOKEN_OUTPUT,
            )
        # The graph's own output width: Dense modules and SPLADE pooling are inside it.
        width = output.shape[1] if len(output.shape) == 2 else None
        if not isinstance(width, int):
            width = recorded.hidden_size if recorded.task is Task.EMBED else len(recorded.labels)
        self.capabilities = Capabilities(
            device="cpu",
            lengths="exact",
            warm="cover",
            output_width=max(width, 1),
            token_outputs=tokens,
        )
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
        if manifest.spec.task is not spec.task:
            raise ModelError(
                f"{artifact} was prepared for {manifest.spec.task.value}, not {spec.task.value}"
            )
        return cls(artifact=artifact, manifest=manifest, threads=settings.intra_op_threads())

    def run(self, batch: Batch) -> FloatArray:
        return self._fetch(self._output, batch)

    def run_tokens(self, batch: Batch) -> FloatArray:
        # ORT computes what the requested output needs: the encoder without the pooling.
        return self._fetch(TOKEN_OUTPUT, batch)

    def _fetch(self, output: str, batch: Batch) -> FloatArray:
        if self._session is None:
            raise RuntimeError("the onnx backend is closed")
        arrays = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        feeds = {name: arrays[name] for name in self._inputs}
        out = self._session.run([output], feeds)[0]
        result: FloatArray = np.asarray(out, dtype=np.float32)
        return result

    @property
    def attention(self) -> str:
        """Which attention the graph runs: ORT's fused operator, the exported nodes, or (an
        `--optimize 0` artifact) whatever ORT's own optimisation makes of them at load."""
        fusion = self.manifest.fusion
        if fusion is not None and "Attention" in fusion.ops:
            return "fused Attention"
        return "MatMul+Softmax" if self.level == 0 else "as onnxruntime fuses it at load"

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
            "optimization": (
                self.manifest.fusion.to_dict()
                if self.manifest.fusion is not None
                else {"fused": self.manifest.fused}
            ),
            "attention": self.attention,
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
