"""Per-task post-processing: prompts, Matryoshka cuts, normalisation, sigmoid and softmax."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from ember.engine import postprocess as pp
from ember.errors import InvalidInput

ROWS = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)


def test_prompts_are_prepended_and_unknown_names_refused() -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    assert pp.with_prompt(["a", "b"], prompts=prompts, name="query") == ["query: a", "query: b"]
    assert pp.with_prompt(["a"], prompts=prompts, name=None) == ["a"]
    with pytest.raises(InvalidInput, match="passage, query"):
        pp.with_prompt(["a"], prompts=prompts, name="doc")


@pytest.mark.parametrize("dimensions", [0, 4, -1])
def test_dimensions_outside_the_width_are_refused(dimensions: int) -> None:
    with pytest.raises(InvalidInput, match="between 1 and 3"):
        pp.check_dimensions(dimensions, 3)
    pp.check_dimensions(3, 3)
    pp.check_dimensions(None, 3)


def test_embeddings_cut_then_normalise() -> None:
    out = pp.embeddings(ROWS, dimensions=2, normalize=True)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
    raw = pp.embeddings(ROWS, dimensions=None, normalize=False)
    np.testing.assert_array_equal(raw, ROWS)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dimensions", [None, 1, 2])
def test_every_output_is_contiguous_float32_and_serialisable(
    normalize: bool, dimensions: int | None
) -> None:
    """orjson refuses non-contiguous arrays: a column slice once answered `/embed` with 500."""
    out = pp.embeddings(ROWS, dimensions=dimensions, normalize=normalize)
    for rows in (out, pp.rerank_scores(ROWS, raw=True), pp.class_scores(ROWS, raw=True)):
        assert rows.dtype == np.float32 and rows.flags.c_contiguous
        orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)


def test_a_zero_vector_normalises_to_zero_not_nan() -> None:
    out = pp.embeddings(np.zeros((1, 3), dtype=np.float32), dimensions=None, normalize=True)
    np.testing.assert_array_equal(out, np.zeros((1, 3)))


def test_rerank_scores_are_the_first_logit_or_its_sigmoid() -> None:
    logits = np.array([[0.0, 9.0], [2.0, 9.0], [-100.0, 9.0]], dtype=np.float32)
    np.testing.assert_array_equal(pp.rerank_scores(logits, raw=True), [[0.0], [2.0], [-100.0]])
    scores = pp.rerank_scores(logits, raw=False)
    np.testing.assert_allclose(scores[:2, 0], [0.5, 1 / (1 + np.exp(-2.0))], rtol=1e-6)
    assert scores[2, 0] == 0.0  # e^100 overflows float32: exactly 0, and no warning


def test_class_scores_are_logits_or_a_softmax_that_never_overflows() -> None:
    logits = np.array([[1000.0, 1000.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    probs = pp.class_scores(logits, raw=False)
    np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(probs[0], [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_array_equal(pp.class_scores(logits, raw=True), logits)
