"""ONNX Runtime CPU sessions as ember opens them, for serving and for prepare's optimise and
verify steps. Options are chosen by measurement on 2-core hosts (benchmarks/onnx_notes.md).
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

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
    """A CPU session on `model`; with `save_to`, ORT also writes the optimised graph there, its
    weights in `<name>.data` beside it (a graph over 2 GB cannot be one protobuf)."""
    options = session_options(threads=threads, level=level)
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{save_to.name}.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return ort.InferenceSession(
        str(model),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )
