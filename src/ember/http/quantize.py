"""Quantised embeddings (int8, uint8, binary, ubinary), as Cohere's `embedding_types` and
Infinity's / sentence-transformers' `quantize_embeddings` give them, plus float and base64.

Method (sentence-transformers' scalar quantisation, calibrated): per dimension, the range
[min, max] of a fixed calibration corpus embedded by the same model with the same
`dimensions` and normalisation is cut into 256 steps; a value maps to its step (clipped at the
ends): uint8 = step, int8 = step - 128. Binary is the sign bit, 8 dimensions per byte, most
significant first (numpy `packbits`; a width not divisible by 8 is padded with zero bits):
ubinary as uint8, binary as int8 (byte - 128), which keeps Hamming distances. The corpus is
embedded once per model, at warm-up.
"""

from __future__ import annotations

import base64
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from ember.backends.base import FloatArray

Quantized = Literal["int8", "uint8", "binary", "ubinary"]
EmbeddingType = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]
QUANTIZED: frozenset[str] = frozenset(get_args(Quantized))

# Varied sentences (topics, lengths, scripts) whose per-dimension spread stands in for real
# traffic; calibration only needs each dimension's typical range, not the exact extremes.
CALIBRATION: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A woman is playing the violin on a stage.",
    "How do I reset my password?",
    "The central bank raised interest rates by a quarter point.",
    "Photosynthesis converts light energy into chemical energy.",
    "The match ended in a draw after extra time.",
    "Embedding servers should be warm before they say they are ready.",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "Preheat the oven to 180 degrees and grease the pan.",
    "The patient was prescribed antibiotics for the infection.",
    "Kubernetes restarts a pod whose liveness probe fails.",
    "She walked along the beach at sunset.",
    "Quarterly revenue grew twelve percent year over year.",
    "The court dismissed the appeal on procedural grounds.",
    "Mount Everest is the highest mountain above sea level.",
    "Python lists are mutable; tuples are not.",
    "The train to Berlin leaves at seven in the morning.",
    "Vaccines train the immune system to recognise a pathogen.",
    "naïve café résumé — déjà vu, Zürich, São Paulo",
    "Привет, как дела? Это тест на кириллице.",
    "これは日本語の文章です。",
    "机器学习模型需要预热才能快速响应。",
    "The orchestra rehearsed Beethoven's ninth symphony.",
    "Rainfall this spring was well below the seasonal average.",
    "Return the item within thirty days for a full refund.",
    "The telescope captured images of a distant galaxy.",
    "Add two cups of flour and a pinch of salt.",
    "The software update fixes a memory leak in the parser.",
    "Children learn languages faster than adults.",
    "The museum opens an exhibition of impressionist paintings.",
)

Int8Array = npt.NDArray[np.int8]
Uint8Array = npt.NDArray[np.uint8]


def ranges(calibration: FloatArray, *, dimensions: int | None, normalize: bool) -> FloatArray:
    """Per-dimension [min, max] (shape 2 x width) of raw calibration vectors prepared the way
    a request's are (first `dimensions`, then normalised)."""
    rows = calibration[:, :dimensions] if dimensions is not None else calibration
    if normalize:
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.stack([rows.min(axis=0), rows.max(axis=0)]).astype(np.float32)


def quantize(
    rows: FloatArray, kind: Quantized, *, bounds: FloatArray | None = None
) -> Int8Array | Uint8Array:
    """`rows` as `kind`; int8/uint8 need `bounds` (from `ranges`)."""
    if kind in ("binary", "ubinary"):
        packed: Uint8Array = np.packbits(rows > 0, axis=-1)
        if kind == "ubinary":
            return packed
        signed: Int8Array = (packed.astype(np.int16) - 128).astype(np.int8)
        return signed
    if bounds is None:
        raise ValueError(f"{kind} needs calibration ranges")
    low, high = bounds[0], bounds[1]
    steps = np.maximum(high - low, 1e-12) / 255.0
    levels = np.clip(np.rint((rows - low) / steps), 0, 255)
    if kind == "uint8":
        unsigned: Uint8Array = levels.astype(np.uint8)
        return unsigned
    signed8: Int8Array = (levels - 128).astype(np.int8)
    return signed8


def as_base64(rows: FloatArray) -> list[str]:
    """Little-endian float32 bytes per row, base64: what OpenAI's `base64` format carries."""
    return [base64.b64encode(r.astype("<f4", copy=False).tobytes()).decode() for r in rows]
