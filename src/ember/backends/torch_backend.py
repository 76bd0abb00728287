"""The torch backend: transformers models on CPU or CUDA, pooling done on the device."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.backends.base import Batch, FloatArray
from ember.errors import ModelError
from ember.models import ModelSpec, Task

if TYPE_CHECKING:
    import torch

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


class TorchBackend:
    """A transformers model; `run` takes numpy, returns float32 numpy."""

    name = "torch"

    def __init__(
        self, *, spec: ModelSpec, device: str = "auto", dtype: str = "auto", threads: int = 1
    ) -> None:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        self.spec = spec
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if self.device == "cpu":
            torch.set_num_threads(threads)
        self.threads = threads
        cls = AutoModel if spec.task is Task.EMBED else AutoModelForSequenceClassification
        try:
            model = cls.from_pretrained(
                str(spec.path), dtype=self.dtype, attn_implementation="sdpa", local_files_only=True
            )
        except Exception as exc:
            raise ModelError(f"cannot load weights from {spec.path}: {exc}") from exc
        self.model = model.to(self.device).eval()
        params = inspect.signature(self.model.forward).parameters
        self._takes_type_ids = "token_type_ids" in params
        self._torch = torch

    def run(self, batch: Batch) -> FloatArray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(batch.input_ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(batch.attention_mask).to(self.device, non_blocking=True)
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if self._takes_type_ids:
                kwargs["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(
                    self.device, non_blocking=True
                )
            out = self.model(**kwargs)
            if self.spec.task is Task.EMBED:
                result = pool(out.last_hidden_state, mask, self.spec.pooling)
            else:
                result = out.logits
            array: FloatArray = result.float().cpu().numpy().astype(np.float32, copy=False)
            return array

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": self.threads if self.device == "cpu" else None,
        }

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
