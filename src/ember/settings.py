"""The one place configuration is read: every field is a `--flag` and an `EMBER_*` variable.

Each field's docstring is its `--help` text (``use_attribute_docstrings``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
BackendName = Literal["auto", "onnx", "cupy", "torch"]
Pooling = Literal["mean", "cls", "max", "lasttoken"]
Quantize = Literal["none", "int8"]
LogLevel = Literal["debug", "info", "warning", "error"]


def _default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ember"))


def _cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole CPUs of a cgroup v2 quota (`max` or no file: none), rounded up."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return -(-int(quota) // int(period))


def _split_list(value: object) -> object:
    """Accept `a,b` and JSON lists from the environment, and lists from the CLI."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """ember's settings; CLI flags override `EMBER_*` variables, which override defaults."""

    model_config = SettingsConfigDict(
        env_prefix="EMBER_",
        use_attribute_docstrings=True,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    # --- network ---------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address to bind."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port to bind (0 picks a free one)."""
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest request line plus headers in bytes (431 above, before auth and before the body;
    Node's default; the API needs ~1 KB)."""
    http_max_headers: int = Field(default=100, ge=8)
    """Most request headers (431 above; hyper's default, as TEI)."""
    http_header_timeout: float = Field(default=10.0, gt=0)
    """Seconds a connection gets to send a whole request head (408 after): a slow-header client
    holds no worker and no shutdown."""
    http_body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a request may go without sending body data while its body is incomplete (408)."""

    # --- models ----------------------------------------------------------------------
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("model", "EMBER_MODEL", "EMBER_MODELS")
    )
    """Model to serve, repeatable: a local folder, an id in the offline Hugging Face cache, or
    `builtin`; `NAME=SOURCE` sets its served name. Default: the built-in all-MiniLM-L6-v2."""
    served_model_name: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Names clients use for the (single) model, repeatable or comma-separated: the first is the
    name responses carry, the others are aliases; default: derived from the model source."""
    pooling: Pooling | None = None
    """Pooling for plain transformers folders (sentence-transformers folders carry their own)."""
    dense_path: str | None = None
    """The Dense module folder to apply after pooling (TEI's `--dense-path`, e.g. `2_Dense_1024`
    of stella_en_*_v5) in place of those modules.json lists; default: modules.json's order."""
    device: Device = "auto"
    """Where to run: cuda when available under `auto`."""
    dtype: DType = "auto"
    """Compute dtype: float32 on CPU and float16 on CUDA under `auto`."""
    strict_model_names: bool = False
    """Answer 404 to a `model` name not served. Off: when one model serves a route's task, any
    name selects it (TEI ignores the field; OpenAI clients send their own model names)."""
    backend: BackendName = "auto"
    """Inference backend. Under `auto`: `onnx` on CPU (prepared on first use); on CUDA `cupy`
    for BERT-shaped models (BERT, RoBERTa, XLM-R, DistilBERT) in float16 when CuPy is installed
    (no torch import), else `torch`."""
    quantize: Quantize = "none"
    """ONNX weight quantisation: `int8` (dynamic, VNNI) trades a little accuracy for speed."""
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where prepared (ONNX) artifacts are cached."""
    threads: int | None = Field(default=None, ge=1)
    """Intra-op threads for inference; default: the cores this process may use."""
    prepare_lock_timeout: float = Field(default=900.0, ge=0)
    """Seconds to wait for another process preparing the same artifact (it is logged with its
    pid) before the load fails; 0 waits forever."""

    # --- limits ----------------------------------------------------------------------
    max_client_batch_size: int = Field(default=2048, ge=1)
    """Most inputs in one request (413 above). OpenAI's limit, not TEI's 32: clients batch
    by their own defaults (langchain-openai 1000, llama-index 100); the payload limit and the
    queue bound limit the work."""
    max_input_length: int | None = Field(default=None, ge=2)
    """Cap on tokens per input, below the model's own maximum; default: the model's."""
    auto_truncate: bool = True
    """Truncate over-long inputs when a request does not say (`truncate: false` still 422s)."""
    payload_limit: int = Field(default=2_000_000, ge=1024)
    """Largest request body in bytes (413 above, rejected before it is read whole)."""
    max_batch_tokens: int | None = Field(default=None, ge=16)
    """Most padded tokens (rows x padded length) in one batch; default 1024 on CPU, 32768 on
    CUDA."""
    max_batch_requests: int | None = Field(default=None, ge=1)
    """Most rows in one batch; default 32 on CPU, 256 on CUDA."""
    max_concurrent_requests: int = Field(default=512, ge=1)
    """Most inputs queued or running at once; past it requests get 429 at once."""
    max_queued_tokens: int = Field(default=1 << 20, ge=1)
    """Most work queued or running at once, in tokens (an input counts its characters until it
    is tokenised, then its tokens); past it requests get 429 at once. 2^20 holds one request of
    2048 inputs of 512 tokens (OpenAI's most); a larger one is admitted when nothing is queued."""
    tokenizer_workers: int | None = Field(default=None, ge=1)
    """Threads tokenising large requests off the event loop (the tokenizer releases the GIL);
    default: the cores this process may use."""
    seq_buckets: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """Padded sequence lengths a batch may have (capped at the max input length); default, from
    the backend: every length for onnx on CPU (a batch is padded to its longest input); ~1.5x
    steps for torch on CPU; 16, 32, ..., 512 on CUDA. Lengths below the task's shortest input
    (its special tokens) are dropped: no input can reach them."""
    row_buckets: Annotated[list[int], NoDecode] = Field(default_factory=list)
    """Row counts a batch may have; default: every count for onnx on CPU (no padded rows),
    powers of two for torch."""

    # --- warm-up ---------------------------------------------------------------------
    warmup: bool = True
    """Warm every shape before `/ready` says 200; off is for development only."""
    warmup_rounds: int = Field(default=1, ge=1)
    """Times each warm-up shape runs."""
    warmup_plan: Literal["auto", "full", "cover"] = "auto"
    """`full` runs every bucket shape; `cover` runs the largest shape and one row at the longest
    and shortest lengths (enough for ONNX Runtime on CPU, shown by `benchmarks/cold_shapes.py`);
    `auto`: `cover` for onnx on CPU, `full` for torch (CPU or CUDA)."""

    # --- operations ------------------------------------------------------------------
    api_key: SecretStr | None = None
    """Bearer key required on every route but /health and /ready (and /metrics, if public)."""
    metrics_public: bool = True
    """Serve /metrics without the API key."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed by CORS; empty turns CORS off."""
    shutdown_timeout: float = Field(default=30.0, ge=0)
    """Seconds in-flight and queued requests get to finish after SIGTERM, SIGINT or SIGHUP
    (all three drain; a second signal finishes now); what is unfinished then gets a 503 with
    Retry-After and the process exits within this + 1 s."""
    exit_on_failure: bool = False
    """Exit (status 1) when loading or warm-up fails, instead of staying up not-ready."""
    log_level: LogLevel = "info"
    """Log level."""
    json_logs: bool = False
    """Log one JSON object per line."""
    reload: bool = False
    """Reload on code changes (development; implies no warm-up unless set)."""

    # --- torch backend (GPU) ---------------------------------------------------------------
    cuda_graphs: bool = True
    """On CUDA, capture each warm-up shape as a CUDA graph where its replay measures faster
    than the eager forward."""
    torch_native: bool = True
    """Run BERT-shaped models with ember's own torch encoder (no transformers import: seconds
    less to ready); off: transformers for every model."""
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Replica processes serving one port (SO_REUSEPORT), each with its own model copy; `/ready`
    says 200 only when all are warm. `auto`: one process on CPU; on CUDA up to 4 per GPU (one
    per 4 host cores, as many as its memory holds), each GPU served by its own workers
    (ember/gpus.py, docs/gpu.md)."""
    worker_heartbeat_timeout: float = Field(default=5.0, gt=0)
    """With `--workers`: seconds without a heartbeat from a worker's event loop (it beats every
    0.1 s) after which the supervisor kills and replaces it as hung."""

    _split = field_validator(
        "model", "served_model_name", "seq_buckets", "row_buckets", "cors_origins", mode="before"
    )(_split_list)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if any(b < 1 for b in self.seq_buckets + self.row_buckets):
            raise ValueError("buckets must be positive")
        self.seq_buckets = sorted(set(self.seq_buckets))
        # `--served-model-name a,b` on the command line arrives as one appended value.
        names = [n.strip() for value in self.served_model_name for n in value.split(",")]
        self.served_model_name = list(dict.fromkeys(n for n in names if n))
        self.row_buckets = sorted(set(self.row_buckets))
        return self

    def available_cores(self) -> int:
        """Cores this process may use: the affinity mask, capped by a cgroup CPU quota (a pod's
        CPU limit shows every core of the node in the mask, but only the quota is usable)."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        quota = _cgroup_cpu_quota()
        return max(1, min(cores, quota)) if quota else cores

    def intra_op_threads(self) -> int:
        return self.threads or self.available_cores()
