"""The torch backend: BERT models with ember's own encoder (others through transformers, with SDPA
attention where the family supports it, eager otherwise), on CPU or CUDA, pooling done on the
device.

On CUDA every bucket shape gets static buffers and, where it measures faster, a CUDA graph
(`cuda_graphs.GraphRunner`); an out-of-memory raises `DeviceOutOfMemory` so that warm-up can
lower the token budget. On CPU a batch runs eagerly.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.backends.base import (
    GPU_SEQ,
    TORCH_CPU_SEQ,
    Batch,
    Capabilities,
    DeviceOutOfMemory,
    FloatArray,
    output_width,
    use_short_gil_switch,
)
from ember.backends.cuda_graphs import GraphRunner
from ember.errors import ModelError
from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

__all__ = [
    "DeviceOutOfMemory",
    "TorchBackend",
    "attention_implementation",
    "dense_head",
    "pick_device",
    "pick_dtype",
    "pool",
    "splade_pool",
]

log = logging.getLogger("ember.backends.torch")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but CUDA is not available")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """Sentence-transformers' pooling over the real (mask=1) tokens."""
    import torch

    if method == "cls":
        return hidden[:, 0]
    if method == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if method == "max":
        return hidden.masked_fill(m == 0, -1e9 if hidden.dtype == torch.float32 else -6e4).amax(1)
    summed = (hidden * m).sum(dim=1, dtype=torch.float32)
    counts = m.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    return summed / counts


def splade_pool(logits: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """sentence-transformers' SpladePooling: log(1 + relu(logits)) over real tokens, max or sum
    per vocabulary id; float32 (rows, vocab)."""
    import torch

    weights = torch.log1p(torch.relu(logits.float())) * mask.unsqueeze(-1).float()
    return weights.amax(dim=1) if method == "splade-max" else weights.sum(dim=1)


def dense_head(spec: ModelSpec, *, device: str, dtype: torch.dtype) -> torch.nn.Module | None:
    """The model's Dense modules as one torch module (Linear, activation, ...), or None."""
    import torch

    if not spec.dense:
        return None
    layers: list[torch.nn.Module] = []
    for layer in spec.dense:
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        weights = _dense_weights(layer.folder)
        try:
            linear.load_state_dict(
                {k.removeprefix("linear."): v for k, v in weights.items() if "linear." in k}
            )
        except RuntimeError as exc:
            raise ModelError(f"{layer.folder}: Dense weights do not fit its config: {exc}") from exc
        layers += [linear, getattr(torch.nn, layer.activation)()]
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()


def _dense_weights(folder: Path) -> dict[str, torch.Tensor]:
    import torch

    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    loaded: dict[str, torch.Tensor] = torch.load(
        str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True
    )
    return loaded


def attention_implementation(auto_class: Any, config: Any) -> str:
    """`sdpa` if the transformers class `auto_class` picks for `config` supports SDPA, else
    `eager` (MPNet, DeBERTa-v2: transformers refuses SDPA for them rather than falling back)."""
    model_class = auto_class._model_mapping[type(config)]
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


Forward = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def _without_cudnn_attention(forward: Forward) -> Forward:
    """`forward` with SDPA limited to flash, memory-efficient and math kernels.

    On Hopper, PyTorch may pick cuDNN's attention for masked SDPA; cuDNN builds an execution
    plan for every new shape (about 80 ms each on an H100, measured: docs/gpu.md), which turns
    44 bucket shapes into seconds of warm-up, and loading cuDNN costs more on the first shape.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def wrapped(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backends):
            return forward(ids, mask, types)

    return wrapped


def _then(forward: Forward, head: torch.nn.Module) -> Forward:
    """`forward` followed by `head` (Dense modules after pooling)."""

    def chained(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        pooled = forward(ids, mask, types)
        out: torch.Tensor = head(pooled.to(next(head.parameters()).dtype))
        return out

    return chained


class TorchBackend:
    """A model in torch; `run` takes numpy, returns float32 numpy."""

    name = "torch"

    def __init__(
        self,
        *,
        spec: ModelSpec,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 1,
        cuda_graphs: bool = True,
        native: bool = True,
        sdpa_cudnn: bool = False,
    ) -> None:
        import torch

        started = time.perf_counter()
        self.spec = spec
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if self.device == "cpu":
            torch.set_num_threads(threads)
        self.threads = threads
        self._torch = torch
        self.implementation = "transformers"
        # ember's own encoder uses SDPA; transformers models say what they got when loaded.
        self.attention = "sdpa"
        self._hidden: Forward | None = None
        """The encoder's unpooled last hidden state (embedding models but SPLADE)."""
        forward: Forward | None = None
        # ember's encoder has no masked-LM head: SPLADE goes through transformers.
        if native and not spec.splade:
            forward = self._load_native()
        if forward is None:
            forward = self._load_transformers()
        head = dense_head(spec, device=self.device, dtype=self.dtype)
        if head is not None:
            forward = _then(forward, head)
        self._runner: GraphRunner | None = None
        if self.device.startswith("cuda"):
            use_short_gil_switch()
            if not sdpa_cudnn:
                forward = _without_cudnn_attention(forward)
            self.sdpa_cudnn = sdpa_cudnn
            self._runner = GraphRunner(
                forward=forward, device=self.device, width=self._width(), graphs=cuda_graphs
            )
        self._forward = forward
        cuda = self.device.startswith("cuda")
        # torch plans per shape (oneDNN, CUDA graphs): coarse buckets, every shape warmed.
        self.capabilities = Capabilities(
            device="cuda" if cuda else "cpu",
            lengths="coarse",
            seq_buckets=GPU_SEQ if cuda else TORCH_CPU_SEQ,
            pads_rows=True,
            warm="all",
            output_width=self._width(),
            max_batch_tokens=32768 if cuda else 1024,
            max_batch_rows=256 if cuda else 32,
            oom=DeviceOutOfMemory if cuda else None,
            # On CUDA every shape would be one more eager plan to warm: served on CPU only.
            token_outputs=self._hidden is not None and not cuda,
        )
        self.load_seconds = time.perf_counter() - started

    def _width(self) -> int:
        return output_width(self.spec)

    def _load_native(self) -> Forward | None:
        from ember.backends.bert import load_bert

        try:
            encoder = load_bert(self.spec, device=self.device, dtype=self.dtype)
        except Exception as exc:
            raise ModelError(f"cannot load weights from {self.spec.path}: {exc}") from exc
        if encoder is None:
            return None
        self.implementation = "native-bert"
        self._encoder = encoder
        method = self.spec.pooling
        if self.spec.task is Task.EMBED:
            self._hidden = encoder.forward

            def embed(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
                return pool(encoder.forward(ids, mask, types), mask, method)

            return embed

        def logits(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            return encoder.head(encoder.forward(ids, mask, types)).float()

        return logits

    def _load_transformers(self) -> Forward:
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForMaskedLM,
            AutoModelForSequenceClassification,
        )

        spec = self.spec
        cls: Any = AutoModel if spec.task is Task.EMBED else AutoModelForSequenceClassification
        if spec.splade:
            cls = AutoModelForMaskedLM
        try:
            config = AutoConfig.from_pretrained(str(spec.path), local_files_only=True)
            self.attention = attention_implementation(cls, config)
            model = cls.from_pretrained(
                str(spec.path),
                config=config,
                dtype=self.dtype,
                attn_implementation=self.attention,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"cannot load weights from {spec.path}: {exc}") from exc
        model = model.to(self.device).eval()
        self.model = model
        # What transformers settled on, should it ever override the request.
        self.attention = str(getattr(model.config, "_attn_implementation", None) or self.attention)
        takes_type_ids = "token_type_ids" in inspect.signature(model.forward).parameters
        method = spec.pooling
        embed, splade = spec.task is Task.EMBED, spec.splade

        def run_model(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> Any:
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if takes_type_ids:
                kwargs["token_type_ids"] = types
            return model(**kwargs)

        def hidden(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            state: torch.Tensor = run_model(ids, mask, types).last_hidden_state
            return state

        if embed and not splade:
            self._hidden = hidden

        def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            out = run_model(ids, mask, types)
            if splade:
                return splade_pool(out.logits, mask, method)
            if embed:
                return pool(out.last_hidden_state, mask, method)
            result: torch.Tensor = out.logits.float()
            return result

        return forward

    def run(self, batch: Batch) -> FloatArray:
        if self._runner is not None:
            return self._runner.run(batch)
        return self._eager(self._forward, batch)

    def run_tokens(self, batch: Batch) -> FloatArray:
        if self._hidden is None:
            raise RuntimeError("this model has no per-token outputs")
        return self._eager(self._hidden, batch)

    def _eager(self, forward: Forward, batch: Batch) -> FloatArray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(batch.input_ids)
            mask = torch.from_numpy(batch.attention_mask)
            types = torch.from_numpy(batch.token_type_ids)
            if self.device != "cpu":
                ids, mask, types = (t.to(self.device) for t in (ids, mask, types))
            result = forward(ids, mask, types)
            array: FloatArray = result.float().cpu().numpy().astype(np.float32, copy=False)
            return array

    def shape_report(self) -> list[dict[str, Any]]:
        """Per-shape first/eager/capture/replay milliseconds on CUDA (empty on CPU)."""
        return self._runner.shape_report() if self._runner is not None else []

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.name,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": self.threads if self.device == "cpu" else None,
            "implementation": self.implementation,
            "family": self.spec.model_type,
            "architecture": self.spec.architecture,
            "attention": self.attention,
        }
        if self.device.startswith("cuda"):
            out["sdpa_cudnn"] = self.sdpa_cudnn
        if self._runner is not None:
            out.update(self._runner.describe())
        return out

    def close(self) -> None:
        self._runner = None
        self.__dict__.pop("model", None)
        self.__dict__.pop("_encoder", None)
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
