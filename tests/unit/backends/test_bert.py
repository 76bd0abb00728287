"""The BERT-shaped families on ember's torch forward (`bert.py`), on CPU: the weight mapping,
position offset, token types and heads that the CuPy backend shares, against transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.backends import bert
from ember.engine.tokenizer import Item
from ember.models import Task, inspect_model
from tests.corpus import PARITY_TEXTS
from tests.unit.backends import families
from tests.unit.backends.common import PAIRS, batch_of, cosines

pytest.importorskip("torch")

CASES = [
    *((f, Task.EMBED, "mean") for f in families.FAMILIES),
    ("xlm-roberta", Task.EMBED, "cls"),
    *((f, Task.RERANK, "mean") for f in families.FAMILIES),
    ("roberta", Task.CLASSIFY, "mean"),
    ("distilbert", Task.CLASSIFY, "mean"),
]


def items_for(task: Task) -> list[Item]:
    if task is Task.EMBED:
        return [*PARITY_TEXTS[:6], "a longer text " * 20]
    if task is Task.RERANK:
        return list(PAIRS)
    return [a for a, _ in PAIRS]


@pytest.mark.parametrize(
    ("family", "task", "pooling"), CASES, ids=lambda v: str(getattr(v, "value", v))
)
def test_native_forward_matches_transformers(
    tiny_dir: Path, family: str, task: Task, pooling: str
) -> None:
    from ember.backends.torch_backend import TorchBackend

    path = families.build(tiny_dir / "bert-shaped", family, task, pooling=pooling)
    spec = inspect_model(str(path))
    assert spec.task is task and spec.pooling == pooling
    config = bert.supported(spec)
    assert config is not None and config.family == family
    backend = TorchBackend(spec=spec, device="cpu", threads=1)
    assert backend.implementation == "native-bert"
    items = items_for(task)
    # Padding rows and padded length, as the batcher sends them.
    batch = batch_of(spec, items, rows=len(items) + 2, seq=64)
    out = backend.run(batch)[: len(items)]
    expected = families.reference(path, family, task, batch, pooling=pooling)[: len(items)]
    if task is Task.EMBED:
        assert cosines(out, expected).min() >= 0.9999
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        assert np.ptp(expected[:, 0]) > 0.05  # scores that differ: the check means something
    backend.close()


def test_family_configs_read_their_own_field_names() -> None:
    distil = bert.encoder_config(
        {"model_type": "distilbert", "dim": 64, "n_heads": 4, "hidden_dim": 256, "n_layers": 3}
    )
    assert distil is not None
    assert (distil.hidden, distil.heads, distil.head_dim, distil.layers) == (64, 4, 16, 3)
    assert (distil.position_offset, distil.head_act, distil.eps) == (0, "relu", 1e-12)
    roberta = bert.encoder_config(
        {"model_type": "xlm-roberta", "hidden_size": 64, "num_attention_heads": 4,
         "intermediate_size": 128, "num_hidden_layers": 2, "pad_token_id": 1}
    )  # fmt: skip
    assert roberta is not None and roberta.position_offset == 2 and roberta.head_act == "tanh"
    assert bert.encoder_config({"model_type": "mpnet"}) is None
    relative = {"model_type": "roberta", "position_embedding_type": "relative_key"}
    assert bert.encoder_config(relative) is None


def test_named_weights_fold_a_single_type_row_into_positions() -> None:
    config = bert.EncoderConfig(
        family="roberta", hidden=2, heads=1, intermediate=4, layers=0, eps=1e-5, act="gelu",
        position_offset=2, head_act="tanh",
    )  # fmt: skip
    position = np.arange(10, dtype=np.float32).reshape(5, 2)
    weights = {
        "roberta.embeddings.word_embeddings.weight": np.zeros((3, 2), np.float32),
        "roberta.embeddings.position_embeddings.weight": position,
        "roberta.embeddings.token_type_embeddings.weight": np.full((1, 2), 100, np.float32),
        "roberta.embeddings.LayerNorm.weight": np.ones(2, np.float32),
        "roberta.embeddings.LayerNorm.bias": np.zeros(2, np.float32),
    }
    named = bert.named_weights(weights, config=config, task=Task.EMBED)
    np.testing.assert_array_equal(named["position"], position[2:] + 100)
    assert "types" not in named
    with pytest.raises(KeyError, match=r"classifier\.dense\.weight"):
        bert.named_weights(weights, config=config, task=Task.RERANK)
