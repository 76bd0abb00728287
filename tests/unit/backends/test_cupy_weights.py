"""The CuPy backend's weight read: the same values the encoder uploaded before (safetensors'
`load_file`, then float16), from a memory map and a few threads; no GPU needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ember.backends.cupy_backend import host_weights


def test_host_weights_equal_load_file_cast_to_float16(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {
        "embeddings.word_embeddings.weight": rng.standard_normal((50, 8), dtype=np.float32),
        "embeddings.position_embeddings.weight": rng.standard_normal((12, 8), dtype=np.float32),
        "embeddings.token_type_embeddings.weight": rng.standard_normal((2, 8), dtype=np.float32),
        "encoder.layer.0.attention.self.query.weight": rng.standard_normal((8, 8)).astype(
            np.float16
        ),
        "encoder.layer.0.output.dense.bias": rng.standard_normal(8, dtype=np.float32),
        "embeddings.position_ids": np.arange(12, dtype=np.int64)[None],
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    got = host_weights(path, threads=2)
    expected = load_file(str(path))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        keep = value.dtype != np.float32 or "position_emb" in name or "token_type" in name
        want = value if keep else value.astype(np.float16)
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.writeable  # copies, not views of the mapped file
