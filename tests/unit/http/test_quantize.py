"""Quantised embeddings: the calibrated scalar method, packing, and that binary vectors keep a
retrieval set's ranking."""

from __future__ import annotations

import numpy as np

from ember.http import quantize


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_int8_and_uint8_map_the_calibrated_range_to_256_steps() -> None:
    calibration = np.array([[-1.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    bounds = quantize.ranges(calibration, dimensions=None, normalize=False)
    assert bounds.tolist() == [[-1.0, 0.0], [1.0, 2.0]]
    rows = np.array([[-1.0, 2.0], [1.0, 0.0], [5.0, -3.0]], dtype=np.float32)
    assert quantize.quantize(rows, "uint8", bounds=bounds).tolist() == [
        [0, 255],
        [255, 0],
        [255, 0],
    ]
    assert quantize.quantize(rows, "int8", bounds=bounds).tolist() == [
        [-128, 127],
        [127, -128],
        [127, -128],
    ]
    # Ranges follow `dimensions` and normalisation as a request's vectors would.
    cut = quantize.ranges(calibration, dimensions=1, normalize=True)
    assert cut.tolist() == [[-1.0], [1.0]]


def test_binary_packs_sign_bits_most_significant_first() -> None:
    rows = np.array([[1, -1, 1, -1, -1, -1, -1, 1, 0.5]], dtype=np.float32)
    ubinary = quantize.quantize(rows, "ubinary")
    assert ubinary.tolist() == [[0b10100001, 0b10000000]]  # 9 dims: padded to 2 bytes
    assert quantize.quantize(rows, "binary").tolist() == [[0b10100001 - 128, 0]]


def test_binary_and_int8_keep_the_ranking_of_a_retrieval_set() -> None:
    """50 documents (unit vectors, 384 dims), each queried by a noisy copy (cosine ~0.7):
    Hamming distance on binary vectors and dot products on int8 find the same documents."""
    rng = np.random.default_rng(0)
    docs = _unit(rng.standard_normal((50, 384)))
    queries = _unit(docs + 0.7 * _unit(rng.standard_normal((50, 384))))
    truth = np.argsort(-(queries @ docs.T), axis=1)

    bits_q = np.unpackbits(quantize.quantize(queries, "ubinary"), axis=1)
    bits_d = np.unpackbits(quantize.quantize(docs, "ubinary"), axis=1)
    hamming = (bits_q[:, None, :] != bits_d[None, :, :]).sum(axis=2)
    binary_top = np.argsort(hamming, axis=1, kind="stable")
    assert (binary_top[:, 0] == truth[:, 0]).mean() == 1.0
    recall10 = np.mean([len(set(binary_top[i, :10]) & set(truth[i, :10])) for i in range(50)])
    assert recall10 >= 5  # of 10 (5.6 measured): below the top few, unrelated near-ties

    bounds = quantize.ranges(docs, dimensions=None, normalize=True)
    q8 = quantize.quantize(queries, "int8", bounds=bounds).astype(np.int32)
    d8 = quantize.quantize(docs, "int8", bounds=bounds).astype(np.int32)
    int8_top = np.argsort(-(q8 @ d8.T), axis=1, kind="stable")
    assert (int8_top[:, 0] == truth[:, 0]).mean() == 1.0
